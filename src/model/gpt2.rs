//! GPT-2 forward and backward over any [`Backend`], as nanoGPT defines the model: token + position
//! embeddings, pre-LayerNorm blocks, explicit causal self-attention (softmax(QKᵀ/√d)V, no flash fusion —
//! Maes et al. need the standard attention), GELU (tanh approximation), final LayerNorm, LM head tied to
//! wte, mean cross-entropy.
//!
//! Activations needed by the backward are kept per layer (llm.c's layout); gradients of activations use a
//! handful of per-layer scratch buffers because every backward op accumulates (`+=`).

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::params::ParamTable;
use crate::rng::Rng;
use num_traits::{ToPrimitive, Zero};

/// Saved activations and scratch for one (B, T) shape.
pub struct Activations<BK: Backend> {
    b: usize,
    t: usize,
    encoded: BK::Buf,   // (BT, C)
    ln1: BK::Buf,       // (L, BT, C)
    ln1_mean: BK::Buf,  // (L, BT)
    ln1_rstd: BK::Buf,  // (L, BT)
    qkv: BK::Buf,       // (L, BT, 3C)
    atty: BK::Buf,      // (L, BT, C)
    att: BK::Buf,       // (L, B, NH, T, T)
    residual2: BK::Buf, // (L, BT, C)
    ln2: BK::Buf,       // (L, BT, C)
    ln2_mean: BK::Buf,  // (L, BT)
    ln2_rstd: BK::Buf,  // (L, BT)
    fch: BK::Buf,       // (L, BT, 4C)
    fch_gelu: BK::Buf,  // (L, BT, 4C)
    residual3: BK::Buf, // (L, BT, C)
    lnf: BK::Buf,       // (BT, C)
    lnf_mean: BK::Buf,  // (BT)
    lnf_rstd: BK::Buf,  // (BT)
    logits: BK::Buf,    // (BT, V); overwritten by dlogits in a training pass
    losses: BK::Buf,    // (BT)
    // scratch shared by forward (projection outputs) and backward (activation gradients)
    proj: BK::Buf,      // (BT, C)
    dres: BK::Buf,      // (BT, C)
    dln: BK::Buf,       // (BT, C)
    datty: BK::Buf,     // (BT, C)
    dqkv: BK::Buf,      // (BT, 3C)
    dfch: BK::Buf,      // (BT, 4C)
    dfch_gelu: BK::Buf, // (BT, 4C)
    datt: BK::Buf,      // (B, NH, T, T)
}

impl<BK: Backend> Activations<BK> {
    fn new(be: &BK, cfg: &ModelConfig, b: usize, t: usize) -> Result<Self> {
        let (l, c, v, nh) = (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let bt = b * t;
        let allocated = std::cell::Cell::new(0u128);
        let a = |n: usize| {
            allocated.set(allocated.get() + n as u128);
            be.alloc(n)
        };
        let acts = Activations {
            b,
            t,
            encoded: a(bt * c)?,
            ln1: a(l * bt * c)?,
            ln1_mean: a(l * bt)?,
            ln1_rstd: a(l * bt)?,
            qkv: a(l * bt * 3 * c)?,
            atty: a(l * bt * c)?,
            att: a(l * b * nh * t * t)?,
            residual2: a(l * bt * c)?,
            ln2: a(l * bt * c)?,
            ln2_mean: a(l * bt)?,
            ln2_rstd: a(l * bt)?,
            fch: a(l * bt * 4 * c)?,
            fch_gelu: a(l * bt * 4 * c)?,
            residual3: a(l * bt * c)?,
            lnf: a(bt * c)?,
            lnf_mean: a(bt)?,
            lnf_rstd: a(bt)?,
            logits: a(bt * v)?,
            losses: a(bt)?,
            proj: a(bt * c)?,
            dres: a(bt * c)?,
            dln: a(bt * c)?,
            datty: a(bt * c)?,
            dqkv: a(bt * 3 * c)?,
            dfch: a(bt * 4 * c)?,
            dfch_gelu: a(bt * 4 * c)?,
            datt: a(b * nh * t * t)?,
        };
        debug_assert_eq!(allocated.get(), activation_elements(cfg, b, t));
        Ok(acts)
    }
}

/// The elements of the activation buffers a training pass over `b` sequences of `t` tokens allocates
/// (every field of `Activations`), in u128 so that an absurd batch is counted, not overflowed.
pub fn activation_elements(cfg: &ModelConfig, b: usize, t: usize) -> u128 {
    let [l, c, v, nh, b, t] =
        [cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head, b, t].map(|x| x as u128);
    let bt = b * t;
    let att = b * nh * t * t;
    // per layer: ln1, atty, residual2, ln2, residual3 (C each), qkv (3C), fch and fch_gelu (4C each),
    // four means/rstds, the attention matrix
    let per_layer = bt * c * (5 + 3 + 8) + 4 * bt + att;
    // encoded, lnf, the scratch proj/dres/dln/datty (C each), dqkv (3C), dfch/dfch_gelu (4C each),
    // lnf mean/rstd and the losses, the logits (V), datt
    let once = bt * c * (6 + 3 + 8) + 3 * bt + bt * v + att;
    l * per_layer + once
}

/// The model: configuration, parameter table, flat parameters and gradients on the backend.
pub struct Gpt2<BK: Backend> {
    pub cfg: ModelConfig,
    pub table: ParamTable,
    pub params: BK::Buf,
    pub grads: BK::Buf,
    acts: Option<Activations<BK>>,
}

/// `x[l]` of a per-layer stacked activation with `per` elements per layer.
fn layer(l: usize, per: usize) -> std::ops::Range<usize> {
    l * per..(l + 1) * per
}

/// The input of block `l` (`per` = B·T·C elements): the embeddings for block 0, else the previous block's
/// output. Takes the two fields, not the whole `Activations`, so other fields stay mutably borrowable.
fn block_input<'a, BK: Backend>(
    be: &BK,
    encoded: &'a BK::Buf,
    residual3: &'a BK::Buf,
    l: usize,
    per: usize,
) -> BK::View<'a> {
    if l == 0 {
        be.view(encoded, 0..per)
    } else {
        be.view(residual3, layer(l - 1, per))
    }
}

impl<BK: Backend> Gpt2<BK> {
    /// A model with GPT-2 initialisation drawn from `seed`.
    pub fn new(be: &BK, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let table = ParamTable::new(cfg);
        let init = table.init(cfg, &mut Rng::derive(seed, crate::rng::STREAM_INIT));
        let mut model = Self::zeroed(be, cfg, table)?;
        model.set_params_f64(be, &init)?;
        Ok(model)
    }

    fn zeroed(be: &BK, cfg: &ModelConfig, table: ParamTable) -> Result<Self> {
        let params = be.alloc(table.total)?;
        let grads = be.alloc(table.total)?;
        Ok(Gpt2 {
            cfg: cfg.clone(),
            table,
            params,
            grads,
            acts: None,
        })
    }

    pub fn num_params(&self) -> usize {
        self.table.total
    }

    pub fn set_params_f64(&mut self, be: &BK, values: &[f64]) -> Result<()> {
        if values.len() != self.table.total {
            return Err(Error::Shape {
                context: "model parameters".into(),
                expected: self.table.total.to_string(),
                got: values.len().to_string(),
            });
        }
        let v: Vec<BK::T> = values
            .iter()
            .map(|&x| num_traits::cast(x).unwrap())
            .collect();
        be.upload(&mut self.params, &v)
    }

    pub fn params_f64(&self, be: &BK) -> Result<Vec<f64>> {
        Ok(be
            .download(&self.params)?
            .into_iter()
            .map(|x| x.to_f64().unwrap())
            .collect())
    }

    pub fn grads_f64(&self, be: &BK) -> Result<Vec<f64>> {
        Ok(be
            .download(&self.grads)?
            .into_iter()
            .map(|x| x.to_f64().unwrap())
            .collect())
    }

    pub fn zero_grads(&mut self, be: &BK) -> Result<()> {
        let n = self.table.total;
        be.fill(be.view_mut(&mut self.grads, 0..n), BK::T::zero())?;
        Ok(())
    }

    fn ensure_acts(&mut self, be: &BK, b: usize, t: usize) -> Result<()> {
        if t > self.cfg.seq_len {
            return Err(Error::config(
                "seq_len",
                format!(
                    "batch has T = {t} but the model's context is {}",
                    self.cfg.seq_len
                ),
            ));
        }
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t) {
            self.acts = None; // free the old shape first
            self.acts = Some(Activations::new(be, &self.cfg, b, t)?);
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<()> {
        if tokens.len() != b * t || targets.len() != b * t {
            return Err(Error::Shape {
                context: "batch".into(),
                expected: format!("{} tokens and targets (B={b}, T={t})", b * t),
                got: format!("{} tokens, {} targets", tokens.len(), targets.len()),
            });
        }
        let v = self.cfg.vocab_size as u32;
        if let Some(bad) = tokens.iter().chain(targets).find(|&&x| x >= v) {
            return Err(Error::config(
                "batch",
                format!("token id {bad} ≥ vocab_size {v}"),
            ));
        }
        Ok(())
    }

    /// Mean cross-entropy of a batch, no gradients.
    pub fn loss(
        &mut self,
        be: &BK,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<f64> {
        self.check_tokens(tokens, targets, b, t)?;
        self.ensure_acts(be, b, t)?;
        self.forward(be, tokens, targets, b, t, None)?;
        self.mean_loss(be)
    }

    /// Forward and backward of one micro-batch: returns its mean loss and ACCUMULATES
    /// `dloss_scale · ∂(Σ losses)/∂θ` into `grads` (pass 1/(B·T·grad_accum) for the mean over a step).
    pub fn forward_backward(
        &mut self,
        be: &BK,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        dloss_scale: f64,
    ) -> Result<f64> {
        self.check_tokens(tokens, targets, b, t)?;
        self.ensure_acts(be, b, t)?;
        let s: BK::T = num_traits::cast(dloss_scale).unwrap();
        self.forward(be, tokens, targets, b, t, Some(s))?;
        let loss = self.mean_loss(be)?;
        self.backward(be, tokens, b, t)?;
        Ok(loss)
    }

    fn mean_loss(&self, be: &BK) -> Result<f64> {
        let a = self.acts.as_ref().expect("activations");
        let losses = be.download(&a.losses)?;
        let sum: f64 = losses.iter().map(|x| x.to_f64().unwrap()).sum();
        Ok(sum / losses.len() as f64)
    }

    fn forward(
        &mut self,
        be: &BK,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        dloss: Option<BK::T>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (c, nh, v) = (cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let bt = b * t;
        let tb = &self.table;
        let p = &self.params;
        let a = self.acts.as_mut().expect("activations");
        let pv = |r: std::ops::Range<usize>| be.view(p, r);
        let pvo = |r: Option<std::ops::Range<usize>>| r.map(|r| be.view(p, r));
        let wpe = tb.entries[tb.wpe].offset..tb.entries[tb.wpe].offset + t * c;

        be.encoder_forward(
            be.view_mut(&mut a.encoded, 0..bt * c),
            tokens,
            pv(tb.r(tb.wte)),
            pv(wpe),
            b,
            t,
            c,
        )?;
        for l in 0..cfg.n_layer {
            let lp = &tb.layers[l];
            let res_in = block_input(be, &a.encoded, &a.residual3, l, bt * c);
            be.layernorm_forward(
                be.view_mut(&mut a.ln1, layer(l, bt * c)),
                be.view_mut(&mut a.ln1_mean, layer(l, bt)),
                be.view_mut(&mut a.ln1_rstd, layer(l, bt)),
                res_in,
                pv(tb.r(lp.ln1_w)),
                pvo(tb.opt(lp.ln1_b)),
                bt,
                c,
            )?;
            be.matmul_forward(
                be.view_mut(&mut a.qkv, layer(l, bt * 3 * c)),
                be.view(&a.ln1, layer(l, bt * c)),
                pv(tb.qkv(l)),
                pvo(tb.qkv_bias(l)),
                bt,
                c,
                3 * c,
            )?;
            be.attention_forward(
                be.view_mut(&mut a.atty, layer(l, bt * c)),
                be.view_mut(&mut a.att, layer(l, b * nh * t * t)),
                be.view(&a.qkv, layer(l, bt * 3 * c)),
                b,
                t,
                c,
                nh,
            )?;
            be.matmul_forward(
                be.view_mut(&mut a.proj, 0..bt * c),
                be.view(&a.atty, layer(l, bt * c)),
                pv(tb.r(lp.attn_proj)),
                pvo(tb.opt(lp.attn_proj_b)),
                bt,
                c,
                c,
            )?;
            let res_in = block_input(be, &a.encoded, &a.residual3, l, bt * c);
            be.residual_forward(
                be.view_mut(&mut a.residual2, layer(l, bt * c)),
                res_in,
                be.view(&a.proj, 0..bt * c),
            )?;
            be.layernorm_forward(
                be.view_mut(&mut a.ln2, layer(l, bt * c)),
                be.view_mut(&mut a.ln2_mean, layer(l, bt)),
                be.view_mut(&mut a.ln2_rstd, layer(l, bt)),
                be.view(&a.residual2, layer(l, bt * c)),
                pv(tb.r(lp.ln2_w)),
                pvo(tb.opt(lp.ln2_b)),
                bt,
                c,
            )?;
            be.matmul_forward(
                be.view_mut(&mut a.fch, layer(l, bt * 4 * c)),
                be.view(&a.ln2, layer(l, bt * c)),
                pv(tb.r(lp.fc)),
                pvo(tb.opt(lp.fc_b)),
                bt,
                c,
                4 * c,
            )?;
            be.gelu_forward(
                be.view_mut(&mut a.fch_gelu, layer(l, bt * 4 * c)),
                be.view(&a.fch, layer(l, bt * 4 * c)),
            )?;
            be.matmul_forward(
                be.view_mut(&mut a.proj, 0..bt * c),
                be.view(&a.fch_gelu, layer(l, bt * 4 * c)),
                pv(tb.r(lp.fc_proj)),
                pvo(tb.opt(lp.fc_proj_b)),
                bt,
                4 * c,
                c,
            )?;
            // residual3[l] = residual2[l] + proj: split the borrow of the two stacked buffers
            be.residual_forward(
                be.view_mut(&mut a.residual3, layer(l, bt * c)),
                be.view(&a.residual2, layer(l, bt * c)),
                be.view(&a.proj, 0..bt * c),
            )?;
        }
        let last = layer(cfg.n_layer - 1, bt * c);
        be.layernorm_forward(
            be.view_mut(&mut a.lnf, 0..bt * c),
            be.view_mut(&mut a.lnf_mean, 0..bt),
            be.view_mut(&mut a.lnf_rstd, 0..bt),
            be.view(&a.residual3, last),
            pv(tb.r(tb.lnf_w)),
            pvo(tb.opt(tb.lnf_b)),
            bt,
            c,
        )?;
        be.matmul_forward(
            be.view_mut(&mut a.logits, 0..bt * v),
            be.view(&a.lnf, 0..bt * c),
            pv(tb.r(tb.wte)),
            None,
            bt,
            c,
            v,
        )?;
        be.crossentropy_forward(
            be.view_mut(&mut a.losses, 0..bt),
            be.view_mut(&mut a.logits, 0..bt * v),
            targets,
            dloss,
            bt,
            v,
        )?;
        Ok(())
    }

    /// Backward after a training forward (logits already hold dlogits). Accumulates into `grads`.
    fn backward(&mut self, be: &BK, tokens: &[u32], b: usize, t: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (c, nh, v) = (cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let bt = b * t;
        let tb = &self.table;
        let p = &self.params;
        let g = &mut self.grads;
        let a = self.acts.as_mut().expect("activations");
        let zero = BK::T::zero();
        let pv = |r: std::ops::Range<usize>| be.view(p, r);

        // LM head: dlnf = dlogits·wte, dwte += dlogitsᵀ·lnf
        be.fill(be.view_mut(&mut a.dln, 0..bt * c), zero)?;
        be.matmul_backward(
            Some(be.view_mut(&mut a.dln, 0..bt * c)),
            be.view_mut(g, tb.r(tb.wte)),
            None,
            be.view(&a.logits, 0..bt * v),
            be.view(&a.lnf, 0..bt * c),
            pv(tb.r(tb.wte)),
            bt,
            c,
            v,
        )?;
        be.fill(be.view_mut(&mut a.dres, 0..bt * c), zero)?;
        let last = layer(cfg.n_layer - 1, bt * c);
        layernorm_bwd(
            be,
            g,
            &mut a.dres,
            tb.lnf_w,
            tb.lnf_b,
            tb,
            &a.dln,
            be.view(&a.residual3, last),
            pv(tb.r(tb.lnf_w)),
            be.view(&a.lnf_mean, 0..bt),
            be.view(&a.lnf_rstd, 0..bt),
            bt,
            c,
        )?;
        for l in (0..cfg.n_layer).rev() {
            let lp = &tb.layers[l];
            // dres = d(residual3[l]); residual3 = residual2 + fcproj(...)
            be.fill(be.view_mut(&mut a.dfch_gelu, 0..bt * 4 * c), zero)?;
            matmul_bwd(
                be,
                g,
                &mut a.dfch_gelu,
                tb.r(lp.fc_proj),
                tb.opt(lp.fc_proj_b),
                be.view(&a.dres, 0..bt * c),
                be.view(&a.fch_gelu, layer(l, bt * 4 * c)),
                pv(tb.r(lp.fc_proj)),
                bt,
                4 * c,
                c,
            )?;
            be.fill(be.view_mut(&mut a.dfch, 0..bt * 4 * c), zero)?;
            be.gelu_backward(
                be.view_mut(&mut a.dfch, 0..bt * 4 * c),
                be.view(&a.fch, layer(l, bt * 4 * c)),
                be.view(&a.dfch_gelu, 0..bt * 4 * c),
            )?;
            be.fill(be.view_mut(&mut a.dln, 0..bt * c), zero)?;
            matmul_bwd(
                be,
                g,
                &mut a.dln,
                tb.r(lp.fc),
                tb.opt(lp.fc_b),
                be.view(&a.dfch, 0..bt * 4 * c),
                be.view(&a.ln2, layer(l, bt * c)),
                pv(tb.r(lp.fc)),
                bt,
                c,
                4 * c,
            )?;
            // dres += LN2 backward: dres becomes d(residual2[l])
            layernorm_bwd(
                be,
                g,
                &mut a.dres,
                lp.ln2_w,
                lp.ln2_b,
                tb,
                &a.dln,
                be.view(&a.residual2, layer(l, bt * c)),
                pv(tb.r(lp.ln2_w)),
                be.view(&a.ln2_mean, layer(l, bt)),
                be.view(&a.ln2_rstd, layer(l, bt)),
                bt,
                c,
            )?;
            // residual2 = res_in + attnproj(atty)
            be.fill(be.view_mut(&mut a.datty, 0..bt * c), zero)?;
            matmul_bwd(
                be,
                g,
                &mut a.datty,
                tb.r(lp.attn_proj),
                tb.opt(lp.attn_proj_b),
                be.view(&a.dres, 0..bt * c),
                be.view(&a.atty, layer(l, bt * c)),
                pv(tb.r(lp.attn_proj)),
                bt,
                c,
                c,
            )?;
            be.fill(be.view_mut(&mut a.dqkv, 0..bt * 3 * c), zero)?;
            be.attention_backward(
                be.view_mut(&mut a.dqkv, 0..bt * 3 * c),
                be.view_mut(&mut a.datt, 0..b * nh * t * t),
                be.view(&a.datty, 0..bt * c),
                be.view(&a.qkv, layer(l, bt * 3 * c)),
                be.view(&a.att, layer(l, b * nh * t * t)),
                b,
                t,
                c,
                nh,
            )?;
            be.fill(be.view_mut(&mut a.dln, 0..bt * c), zero)?;
            matmul_bwd(
                be,
                g,
                &mut a.dln,
                tb.qkv(l),
                tb.qkv_bias(l),
                be.view(&a.dqkv, 0..bt * 3 * c),
                be.view(&a.ln1, layer(l, bt * c)),
                pv(tb.qkv(l)),
                bt,
                c,
                3 * c,
            )?;
            let res_in = block_input(be, &a.encoded, &a.residual3, l, bt * c);
            // dres += LN1 backward: dres becomes d(res_in)
            layernorm_bwd(
                be,
                g,
                &mut a.dres,
                lp.ln1_w,
                lp.ln1_b,
                tb,
                &a.dln,
                res_in,
                pv(tb.r(lp.ln1_w)),
                be.view(&a.ln1_mean, layer(l, bt)),
                be.view(&a.ln1_rstd, layer(l, bt)),
                bt,
                c,
            )?;
        }
        let wpe = tb.entries[tb.wpe].offset..tb.entries[tb.wpe].offset + t * c;
        let [dwte, dwpe] = be.views_mut(g, [tb.r(tb.wte), wpe]);
        be.encoder_backward(dwte, dwpe, be.view(&a.dres, 0..bt * c), tokens, b, t, c)?;
        Ok(())
    }
}

/// matmul_backward with the weight (and bias) gradients as disjoint views of the flat grads buffer.
#[allow(clippy::too_many_arguments)]
fn matmul_bwd<BK: Backend>(
    be: &BK,
    grads: &mut BK::Buf,
    dinp: &mut BK::Buf,
    w: std::ops::Range<usize>,
    bias: Option<std::ops::Range<usize>>,
    dout: BK::View<'_>,
    inp: BK::View<'_>,
    weight: BK::View<'_>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    let dinp = Some(be.view_mut(dinp, 0..n * c));
    match bias {
        Some(br) => {
            let [dw, db] = be.views_mut(grads, [w, br]);
            be.matmul_backward(dinp, dw, Some(db), dout, inp, weight, n, c, oc)?;
        }
        None => {
            let dw = be.view_mut(grads, w);
            be.matmul_backward(dinp, dw, None, dout, inp, weight, n, c, oc)?;
        }
    }
    Ok(())
}

/// layernorm_backward into `dres` (+=) with gain/bias gradients from the flat grads buffer.
#[allow(clippy::too_many_arguments)]
fn layernorm_bwd<BK: Backend>(
    be: &BK,
    grads: &mut BK::Buf,
    dres: &mut BK::Buf,
    w: usize,
    bias: Option<usize>,
    tb: &ParamTable,
    dout: &BK::Buf,
    inp: BK::View<'_>,
    weight: BK::View<'_>,
    mean: BK::View<'_>,
    rstd: BK::View<'_>,
    n: usize,
    c: usize,
) -> Result<()> {
    let dinp = be.view_mut(dres, 0..n * c);
    let dout = be.view(dout, 0..n * c);
    match bias {
        Some(bi) => {
            let [dw, db] = be.views_mut(grads, [tb.r(w), tb.r(bi)]);
            be.layernorm_backward(dinp, dw, Some(db), dout, inp, weight, mean, rstd, n, c)?;
        }
        None => {
            let dw = be.view_mut(grads, tb.r(w));
            be.layernorm_backward(dinp, dw, None, dout, inp, weight, mean, rstd, n, c)?;
        }
    }
    Ok(())
}
