//! Hessian rows (Maes et al. §4.2, App. D.5.2–D.5.3, Fig. 7, Tables 2, 4, 5): which parameter indices to
//! sample, the neuron / layer / non-layer groups of an index, and the decomposition of ⟨d, Hᵢ⟩.
//!
//! **Default rows.** Maes et al. Table 4 sample 8 rows of GPT-2 124M: layers 2 and 8 (0-based, of 12), in
//! each the attention computation (c_attn), the attention projection, the MLP fc and the MLP projection.
//! Their row ids are flat indices into nanoGPT's parameter order with the padded vocabulary 50,304 and no
//! biases (wte, wpe, then per layer ln_1, c_attn, c_proj, ln_2, c_fc, c_proj); only that layout puts every id
//! in the tensor the table names (with 50,257 the layer-8 projection id falls into c_fc). Decoded, they are
//! (tensor, row, column) of the (out, in) weight — all four c_attn ids fall in its first third, q:
//!
//! | paper id | layer | tensor | (row, col) of 124M shape |
//! |---|---|---|---|
//! | 53,970,691 | 2 | q (c_attn rows 0..768) | (509, 259) of 768×768 |
//! | 55,680,281 | 2 | attn.c_proj | (431, 281) of 768×768 |
//! | 57,847,212 | 2 | mlp.c_fc | (2483, 684) of 3072×768 |
//! | 58,790,300 | 2 | mlp.c_proj | (159, 2972) of 768×3072 |
//! | 96,585,666 | 8 | q | (689, 450) of 768×768 |
//! | 97,929,821 | 8 | attn.c_proj | (135, 605) of 768×768 |
//! | 99,845,651 | 8 | mlp.c_fc | (1861, 275) of 3072×768 |
//! | 102,950,588 | 8 | mlp.c_proj | (708, 188) of 768×3072 |
//!
//! On a model of depth L the layers map to round(2L/12) and round(8L/12) (clamped to L−1) and the (row, col)
//! to ⌊row·rows/rows₁₂₄ₘ⌋, ⌊col·cols/cols₁₂₄ₘ⌋ of this model's tensor, so on GPT-2 124M these are exactly the
//! paper's weights (at indices of this project's flat layout: vocabulary 50,257, q/k/v split).
//!
//! **Groups of index i** (in the diagnostics' in-place basis, see `hvp`): *layer* = the ParamTable entry
//! (tensor) holding i (q, k and v are separate layers, as the rotation scopes treat them); *neuron* = the
//! weights leading to the same output neuron: row r of an (out, in) weight, column c of an embedding
//! (stored (in, out), so its output neuron is a column, as the `output` rotation scope treats it), the
//! coordinate itself for a 1-D tensor; *non-layer* = everything else. The "layer" part excludes the neuron.
//!
//! **Table 5's expectation.** Maes et al. report the "expected gradient contribution" ⟨d, Hᵢ⟩ (Table 5,
//! App. D.5.3), an expectation over batches B of ⟨d, H_{B,i}⟩. With `--row-expectation budget` (the
//! default) the expectation is taken by H itself, the Hessian of the mean loss over the token budget
//! (one HVP per row; by linearity ⟨d, mean_B H_{B,i}⟩ = mean_B ⟨d, H_{B,i}⟩ over the budget's
//! micro-batches). With `--row-expectation batches` every row is computed on each of the `--batches`
//! minibatches, each contribution is the mean of the per-batch values (all reported, with their
//! standard deviation), and the row written, plotted and summarised (Hᵢᵢ, ‖Hᵢ‖₁, masses) is the mean row.
//!
//! **The row file** `row<i>_<tag>.safetensors` holds Hᵢ (in the diagnostics' basis) in the layout of the
//! checkpoint's `model.safetensors` ([`crate::model::hf::to_hf`]): one F64 tensor per parameter tensor
//! of the model, named as in the checkpoint (`transformer.h.0.attn.c_attn.weight`, …) with its shape
//! (Conv1D weights (in, out), q/k/v fused in `c_attn`), each row-major. Entry j of the flat row sits
//! where weight j sits in the checkpoint, so `hf::from_hf` of the file gives Hᵢ in the flat order, and an
//! HVP taken outside (e.g. on `GPT2LMHeadModel` with the checkpoint's weights) compares tensor by
//! tensor. A model without biases gets no bias tensors (the checkpoint's zero biases are not parameters).
//! One metadata key, `hessian_row`, holds [`RowFileMeta`] as JSON (`docs/diagnostics.md`).

use super::estimators::{decompose, Contribution};
use super::hvp::Gpt2Hvp;
use super::target::Target;
use super::{
    say, DiagnoseOptions, RowBatches, RowExpectation, RowMass, RowReport, RowsReport,
    STREAM_RANDOM_DIRS,
};
use crate::config::ModelConfig;
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::model::hf::{to_hf, HF_PREFIX};
use crate::model::{ParamEntry, ParamTable, Role};
use crate::rng::Rng;
use serde::Serialize;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One default row: (layer of 12, role, row and column in the 124M tensor, the 124M tensor's shape,
/// Maes et al.'s row id).
struct PaperRow {
    layer12: usize,
    role: Role,
    row: usize,
    col: usize,
    rows: usize,
    cols: usize,
    paper_id: u64,
}

const PAPER_ROWS: [PaperRow; 8] = [
    PaperRow {
        layer12: 2,
        role: Role::Q,
        row: 509,
        col: 259,
        rows: 768,
        cols: 768,
        paper_id: 53_970_691,
    },
    PaperRow {
        layer12: 2,
        role: Role::AttnProj,
        row: 431,
        col: 281,
        rows: 768,
        cols: 768,
        paper_id: 55_680_281,
    },
    PaperRow {
        layer12: 2,
        role: Role::Fc,
        row: 2483,
        col: 684,
        rows: 3072,
        cols: 768,
        paper_id: 57_847_212,
    },
    PaperRow {
        layer12: 2,
        role: Role::FcProj,
        row: 159,
        col: 2972,
        rows: 768,
        cols: 3072,
        paper_id: 58_790_300,
    },
    PaperRow {
        layer12: 8,
        role: Role::Q,
        row: 689,
        col: 450,
        rows: 768,
        cols: 768,
        paper_id: 96_585_666,
    },
    PaperRow {
        layer12: 8,
        role: Role::AttnProj,
        row: 135,
        col: 605,
        rows: 768,
        cols: 768,
        paper_id: 97_929_821,
    },
    PaperRow {
        layer12: 8,
        role: Role::Fc,
        row: 1861,
        col: 275,
        rows: 3072,
        cols: 768,
        paper_id: 99_845_651,
    },
    PaperRow {
        layer12: 8,
        role: Role::FcProj,
        row: 708,
        col: 188,
        rows: 768,
        cols: 3072,
        paper_id: 102_950_588,
    },
];

/// A parameter index to sample, with where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowPosition {
    /// Flat index (this project's layout).
    pub index: usize,
    /// The tensor holding it.
    pub tensor: String,
    /// (row, col) inside that tensor (col 0 for 1-D tensors).
    pub row: usize,
    pub col: usize,
    /// Maes et al.'s row id this position stands for (default positions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paper_id: Option<u64>,
}

/// The entry holding flat index `i` (None when out of range).
pub fn entry_of(table: &ParamTable, i: usize) -> Option<&ParamEntry> {
    table.entries.iter().find(|e| e.range().contains(&i))
}

/// The 8 default positions mapped onto `table`'s depth and shapes (module docs).
pub fn default_positions(table: &ParamTable) -> Vec<RowPosition> {
    let nl = table.layers.len();
    PAPER_ROWS
        .iter()
        .map(|p| {
            let l = ((p.layer12 * nl) as f64 / 12.0).round() as usize;
            let lp = &table.layers[l.min(nl - 1)];
            let idx = match p.role {
                Role::Q => lp.q,
                Role::AttnProj => lp.attn_proj,
                Role::Fc => lp.fc,
                Role::FcProj => lp.fc_proj,
                _ => unreachable!("default rows are q, attn.c_proj, fc, fc_proj"),
            };
            let e = &table.entries[idx];
            let row = p.row * e.rows / p.rows;
            let col = p.col * e.cols / p.cols;
            RowPosition {
                index: e.offset + row * e.cols + col,
                tensor: e.name.clone(),
                row,
                col,
                paper_id: Some(p.paper_id),
            }
        })
        .collect()
}

/// The position of a user-given flat index.
pub fn position(table: &ParamTable, i: usize) -> Option<RowPosition> {
    let e = entry_of(table, i)?;
    let off = i - e.offset;
    Some(RowPosition {
        index: i,
        tensor: e.name.clone(),
        row: off / e.cols,
        col: off % e.cols,
        paper_id: None,
    })
}

/// (neuron indices, layer range) of flat index `i` (module docs).
pub fn groups(table: &ParamTable, i: usize) -> Option<(Vec<usize>, Range<usize>)> {
    let e = entry_of(table, i)?;
    let off = i - e.offset;
    let neuron: Vec<usize> = if !e.is_matrix() {
        vec![i]
    } else if e.role.is_embedding() {
        let c = off % e.cols;
        (0..e.rows).map(|r| e.offset + r * e.cols + c).collect()
    } else {
        let r = off / e.cols;
        (e.offset + r * e.cols..e.offset + (r + 1) * e.cols).collect()
    };
    Some((neuron, e.range()))
}

/// ⟨dir, row⟩ decomposed over the groups of index i of `table`.
pub fn contribution(table: &ParamTable, i: usize, row: &[f64], dir: &[f64]) -> Contribution {
    let (neuron, layer) = groups(table, i).expect("index inside the table");
    decompose(row, dir, &neuron, layer)
}

/// Element-wise sample standard deviation of contributions (n − 1 in the denominator; None below 2).
pub fn std_contribution(cs: &[Contribution]) -> Option<Contribution> {
    if cs.len() < 2 {
        return None;
    }
    let m = mean_contribution(cs, false);
    let n = (cs.len() - 1) as f64;
    let sd = |f: fn(&Contribution) -> f64| {
        let mu = f(&m);
        (cs.iter().map(|c| (f(c) - mu).powi(2)).sum::<f64>() / n).sqrt()
    };
    Some(Contribution {
        neuron: sd(|c| c.neuron),
        layer: sd(|c| c.layer),
        non_layer: sd(|c| c.non_layer),
        total: sd(|c| c.total),
    })
}

/// Element-wise mean of contributions (and of their absolute values when `abs`).
pub fn mean_contribution(cs: &[Contribution], abs: bool) -> Contribution {
    let n = cs.len().max(1) as f64;
    let f = |x: f64| if abs { x.abs() } else { x };
    Contribution {
        neuron: cs.iter().map(|c| f(c.neuron)).sum::<f64>() / n,
        layer: cs.iter().map(|c| f(c.layer)).sum::<f64>() / n,
        non_layer: cs.iter().map(|c| f(c.non_layer)).sum::<f64>() / n,
        total: cs.iter().map(|c| f(c.total)).sum::<f64>() / n,
    }
}

/// Layer (tensor) boundaries as (start index, name) for plots: every ParamTable entry with at least
/// `min_len` coordinates.
pub fn boundaries(table: &ParamTable, min_len: usize) -> Vec<(usize, String)> {
    table
        .entries
        .iter()
        .filter(|e| e.len() >= min_len)
        .map(|e| (e.offset, e.name.clone()))
        .collect()
}

/// What the row file's metadata key `hessian_row` holds (JSON): which row, where its index sits in the
/// checkpoint's tensors, and which Hessian.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct RowFileMeta {
    /// i, the flat index of the row (this project's layout) and its (tensor, row, col) there.
    pub index: usize,
    pub tensor: String,
    pub row: usize,
    pub col: usize,
    /// Where weight i sits in the checkpoint: its tensor and its position (multi-index of that tensor's
    /// shape), i.e. where the one-hot probe eᵢ has its 1.
    pub hf_tensor: String,
    pub hf_position: Vec<usize>,
    /// The checkpoint's step and the basis the row is written in (`none`: the standard basis).
    pub step: usize,
    pub basis: String,
    /// Which Hessian: the mean loss over the token budget, or the mean of per-batch rows.
    pub hessian: String,
}

/// The checkpoint's tensors of the model's parameters, in its names and shapes, holding `flat` (the
/// flat layout): [`to_hf`] less the bias tensors a model without biases does not have.
pub fn checkpoint_tensors(
    cfg: &ModelConfig,
    table: &ParamTable,
    flat: &[f64],
) -> Vec<crate::model::hf::HfTensor> {
    to_hf(cfg, table, flat)
        .into_iter()
        .filter(|t| cfg.bias || !t.name.ends_with(".bias"))
        .map(|mut t| {
            t.name = format!("{HF_PREFIX}{}", t.name);
            t
        })
        .collect()
}

/// (tensor name, multi-index) of flat index `i` in the checkpoint's tensors.
fn checkpoint_position(cfg: &ModelConfig, table: &ParamTable, i: usize) -> (String, Vec<usize>) {
    let mut onehot = vec![0.0; table.total];
    onehot[i] = 1.0;
    for t in checkpoint_tensors(cfg, table, &onehot) {
        if let Some(k) = t.values.iter().position(|&x| x == 1.0) {
            let mut pos = vec![0; t.shape.len()];
            let mut rest = k;
            for (p, &n) in pos.iter_mut().zip(&t.shape).rev() {
                *p = rest % n;
                rest /= n;
            }
            return (t.name, pos);
        }
    }
    unreachable!("every flat index is a weight of a checkpoint tensor")
}

/// Write `row` (flat layout) to `path` as F64 safetensors in the checkpoint's names and shapes
/// ([`checkpoint_tensors`]), with `meta` under the one metadata key `hessian_row` (one key, so the bytes
/// are the same from run to run); written beside and renamed into place.
pub fn write_row(
    path: &Path,
    cfg: &ModelConfig,
    table: &ParamTable,
    row: &[f64],
    meta: &RowFileMeta,
) -> Result<()> {
    let encoded: Vec<crate::tensors::Encoded> = checkpoint_tensors(cfg, table, row)
        .into_iter()
        .map(|t| {
            let bytes = t.values.iter().flat_map(|x| x.to_le_bytes()).collect();
            (t.name, t.shape, bytes)
        })
        .collect();
    let mut md = std::collections::HashMap::new();
    md.insert(
        "hessian_row".to_string(),
        serde_json::to_string(meta).expect("the row's metadata serialises"),
    );
    let tmp = path.with_extension("safetensors.tmp");
    crate::tensors::write(&tmp, safetensors::Dtype::F64, &encoded, md)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The rows of `args` (or the default positions) and their decomposition along the checkpoint's last
/// update (`last_update`: standard layout, or why there is none) and random directions; H is `f`'s
/// (the token budget) or, with `--row-expectation batches`, each of `batches[..args.batches]` in turn.
#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    args: &DiagnoseOptions,
    t: &Target,
    table: &ParamTable,
    last_update: std::result::Result<Vec<f64>, String>,
    f: &mut Gpt2Hvp,
    batches: &[Batch],
    out_dir: &Path,
    tag: &str,
) -> Result<RowsReport> {
    let d = f.dim();
    let positions: Vec<RowPosition> = if args.rows.is_empty() {
        default_positions(table)
    } else {
        args.rows
            .iter()
            .map(|&i| {
                position(table, i).ok_or_else(|| {
                    Error::config("--rows", format!("index {i} is out of range (d = {d})"))
                })
            })
            .collect::<Result<_>>()?
    };
    let (update, update_desc) = match last_update {
        Ok(u) => (
            Some(f.rotate(&u)?),
            "last-update (w_t - w_{t-1} rebuilt from the checkpoint's AdamW moments)".to_string(),
        ),
        Err(e) => (None, format!("none: {e}")),
    };
    let update_norm = update.as_ref().map_or(0.0, |u| super::estimators::norm2(u));
    let scale = if update_norm > 0.0 { update_norm } else { 1.0 };
    let mut rng = Rng::derive(args.seed, STREAM_RANDOM_DIRS);
    let random: Vec<Vec<f64>> = (0..args.random_dirs)
        .map(|_| {
            let g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let n = super::estimators::norm2(&g);
            g.into_iter().map(|x| x * scale / n).collect()
        })
        .collect();
    let expectation = match args.row_expectation {
        RowExpectation::Budget => None,
        RowExpectation::Batches => Some(&batches[..args.batches.min(batches.len())]),
    };
    let hessian = match expectation {
        None => {
            let b = super::hvp_budget(args, t);
            format!(
                "H of the mean loss over {} tokens ({} fixed train micro-batches of {}x{}, seed {})",
                b.tokens, b.micro_batches, b.batch_size, b.seq_len, args.seed
            )
        }
        Some(bs) => format!(
            "mean over {} fixed train minibatches of {}x{} (seed {}) of each one's Hessian row",
            bs.len(),
            bs[0].b,
            bs[0].t,
            args.seed
        ),
    };
    // the parts of one row along the update and, averaged over the random directions, along those
    let parts = |i: usize, row: &[f64]| -> (Option<Contribution>, Contribution, Contribution) {
        let upd = update.as_ref().map(|u| contribution(table, i, row, u));
        let rc: Vec<Contribution> = random
            .iter()
            .map(|r| contribution(table, i, row, r))
            .collect();
        (
            upd,
            mean_contribution(&rc, false),
            mean_contribution(&rc, true),
        )
    };
    let mut out = Vec::new();
    for p in positions {
        say(
            args,
            format!("hessian-rows: row {} ({})", p.index, p.tensor),
        );
        let (row, upd, random_mean, random_mean_abs, per_batch) = match expectation {
            None => {
                let row = super::estimators::hessian_row(|v, o| f.hvp(v, o), d, p.index)?;
                let (upd, rm, ra) = parts(p.index, &row);
                (row, upd, rm, ra, None)
            }
            Some(bs) => {
                let mut sum = vec![0.0; d];
                let (mut ups, mut rms, mut ras) = (Vec::new(), Vec::new(), Vec::new());
                for (k, b) in bs.iter().enumerate() {
                    let one = std::slice::from_ref(b);
                    let row_b =
                        super::estimators::hessian_row(|v, o| f.hvp_on(one, v, o), d, p.index)?;
                    let (u, rm, ra) = parts(p.index, &row_b);
                    ups.extend(u);
                    rms.push(rm);
                    ras.push(ra);
                    sum.iter_mut().zip(&row_b).for_each(|(s, x)| *s += x);
                    if (k + 1) % 100 == 0 {
                        say(
                            args,
                            format!(
                                "hessian-rows: row {}: {} / {} batches",
                                p.index,
                                k + 1,
                                bs.len()
                            ),
                        );
                    }
                }
                let n = bs.len() as f64;
                sum.iter_mut().for_each(|s| *s /= n);
                let upd = (!ups.is_empty()).then(|| mean_contribution(&ups, false));
                let pb = RowBatches {
                    count: bs.len(),
                    update_std: std_contribution(&ups),
                    update: ups,
                    random_mean: rms.clone(),
                };
                (
                    sum,
                    upd,
                    mean_contribution(&rms, false),
                    mean_contribution(&ras, false),
                    Some(pb),
                )
            }
        };
        let (neuron, layer) = groups(table, p.index).expect("position inside the table");
        let abs_sum = |it: &mut dyn Iterator<Item = usize>| it.map(|j| row[j].abs()).sum::<f64>();
        let l1: f64 = row.iter().map(|x| x.abs()).sum();
        let n_mass = abs_sum(&mut neuron.iter().copied());
        let l_mass = abs_sum(&mut layer.clone()) - n_mass;
        let denom = if l1 > 0.0 { l1 } else { 1.0 };
        let title = format!(
            "Hessian row {} ({} [{}, {}]), basis {}, step {}",
            p.index,
            p.tensor,
            p.row,
            p.col,
            tag_basis(tag),
            t.state.step
        );
        let plot = plot_row(
            args,
            table,
            &row,
            &p,
            &title,
            &out_dir.join(format!("row{}_{tag}.png", p.index)),
        );
        let cfg = &t.state.model;
        let (hf_tensor, hf_position) = checkpoint_position(cfg, table, p.index);
        let tensors = out_dir.join(format!("row{}_{tag}.safetensors", p.index));
        let meta = RowFileMeta {
            index: p.index,
            tensor: p.tensor.clone(),
            row: p.row,
            col: p.col,
            hf_tensor,
            hf_position,
            step: t.state.step,
            basis: tag_basis(tag).to_string(),
            hessian: hessian.clone(),
        };
        write_row(&tensors, cfg, table, &row, &meta)?;
        out.push(RowReport {
            diagonal: row[p.index],
            l1,
            linf: super::estimators::linf(&row),
            mass: RowMass {
                neuron: n_mass / denom,
                layer: l_mass / denom,
                non_layer: (l1 - n_mass - l_mass) / denom,
            },
            update: upd,
            random_mean,
            random_mean_abs,
            batches: per_batch,
            plot,
            tensors,
            position: p,
        });
    }
    Ok(RowsReport {
        expectation: args.row_expectation,
        expectation_batches: expectation.map(<[Batch]>::len),
        update_direction: update_desc,
        update_norm,
        random_dirs: args.random_dirs,
        rows: out,
        seconds: 0.0,
    })
}

/// The row's plot (Maes et al. Fig. 7 style): |H_ij| over the parameter index j on a log axis (downsampled
/// by the max per pixel column, so no spike is lost), with markers at wte, wpe, every transformer block,
/// ln_f and the sampled index itself. A failure to draw is reported on stderr and leaves `plot` empty:
/// the numbers matter more than the figure.
fn plot_row(
    args: &DiagnoseOptions,
    table: &ParamTable,
    row: &[f64],
    p: &RowPosition,
    title: &str,
    path: &Path,
) -> Option<PathBuf> {
    use crate::plot::{Axes, Marker, RowPlot, RowValues};
    let mut markers = vec![
        Marker {
            x: table.entries[table.wte].offset as f64,
            label: "wte".into(),
        },
        Marker {
            x: table.entries[table.wpe].offset as f64,
            label: "wpe".into(),
        },
    ];
    for (l, lp) in table.layers.iter().enumerate() {
        markers.push(Marker {
            x: table.entries[lp.ln1_w].offset as f64,
            label: format!("h.{l}"),
        });
    }
    markers.push(Marker {
        x: table.entries[table.lnf_w].offset as f64,
        label: "ln_f".into(),
    });
    markers.push(Marker {
        x: p.index as f64,
        label: format!("row {}", p.index),
    });
    let plot = RowPlot {
        axes: Axes::new(title, "parameter index j", "|H_ij|").log_y(),
        values: RowValues::F64(row),
        markers,
    };
    match plot.save(path) {
        Ok(()) => Some(path.to_path_buf()),
        Err(e) => {
            say(
                args,
                format!("hessian-rows: no plot for row {}: {e}", p.index),
            );
            None
        }
    }
}

/// The basis part of a file tag `step<N>_<basis>`.
fn tag_basis(tag: &str) -> &str {
    tag.split_once('_').map_or(tag, |(_, b)| b)
}
