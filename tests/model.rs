//! The whole model: gradient check in f64, f32/bf16 parity against f64, the ParamTable, and the
//! Hugging Face checkpoint layout.

use rotadam::backend::cpu::CpuBackend;
use rotadam::config::ModelConfig;
use rotadam::model::{Gpt2, ParamTable, Role};
use rotadam::rng::Rng;
use rotadam::run::checkpoint;

pub fn tiny(bias: bool) -> ModelConfig {
    ModelConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        seq_len: 6,
        vocab_size: 11,
        bias,
    }
}

pub fn batch(cfg: &ModelConfig, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let v = cfg.vocab_size as u64;
    let x = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let y = (0..b * t).map(|_| rng.below(v) as u32).collect();
    (x, y)
}

/// Random non-trivial weights (biases and LN gains perturbed too, so every gradient path is exercised).
fn perturbed(cfg: &ModelConfig, seed: u64) -> Vec<f64> {
    let table = ParamTable::new(cfg);
    let mut rng = Rng::new(seed);
    let mut w = table.init(cfg, &mut rng);
    for x in w.iter_mut() {
        *x += 0.1 * rng.normal();
    }
    w
}

fn f64_model(cfg: &ModelConfig, w: &[f64]) -> (CpuBackend<f64>, Gpt2<CpuBackend<f64>>) {
    let be = CpuBackend::<f64>::new(1, false);
    let mut m = Gpt2::new(&be, cfg, 0).unwrap();
    m.set_params_f64(&be, w).unwrap();
    (be, m)
}

#[test]
fn gpt2_gradient_matches_finite_differences_f64() {
    for bias in [false, true] {
        let cfg = tiny(bias);
        let (b, t) = (2, 5);
        let (x, y) = batch(&cfg, b, t, 11);
        let w = perturbed(&cfg, 5);
        let (be, mut m) = f64_model(&cfg, &w);
        m.zero_grads(&be).unwrap();
        let loss = m
            .forward_backward(&be, &x, &y, b, t, 1.0 / (b * t) as f64)
            .unwrap();
        let grads = m.grads_f64(&be).unwrap();
        assert!(loss.is_finite());
        let h = 1e-5;
        let mut worst = (0.0f64, 0usize);
        // every coordinate of every tensor: the tiny model has a few thousand
        for i in 0..w.len() {
            let mut wp = w.clone();
            wp[i] += h;
            m.set_params_f64(&be, &wp).unwrap();
            let lp = m.loss(&be, &x, &y, b, t).unwrap();
            wp[i] -= 2.0 * h;
            m.set_params_f64(&be, &wp).unwrap();
            let lm = m.loss(&be, &x, &y, b, t).unwrap();
            let fd = (lp - lm) / (2.0 * h);
            // relative error with a floor: tiny gradients are compared absolutely at 1e-9
            let err = (fd - grads[i]).abs() / fd.abs().max(grads[i].abs()).max(1e-3);
            if err > worst.0 {
                worst = (err, i);
            }
            assert!(
                err <= 1e-6,
                "bias={bias}: param {i} ({}): finite difference {fd:e} vs backward {:e} (rel err {err:e})",
                m.table.entries.iter().find(|e| e.range().contains(&i)).unwrap().name,
                grads[i]
            );
        }
        eprintln!(
            "bias={bias}: worst relative error {:e} at {}",
            worst.0, worst.1
        );
    }
}

/// f32 and f64 on the same weights: the loss agrees to ~f32 epsilon times the depth of the computation,
/// gradients to atol + rtol·|g|. Constants: f32 eps = 1.2e-7; the tiny model's reductions are short
/// (C = 8 … V = 11), so rtol = 1e-4 and atol = 1e-6 (relative to the gradient scale ~1e-2) leave a
/// margin of ~100x over the observed error while still catching any real mistake (≥ 1e-3).
#[test]
fn gpt2_f32_and_bf16_match_f64() {
    let cfg = tiny(true);
    let (b, t) = (3, 6);
    let (x, y) = batch(&cfg, b, t, 2);
    let w = perturbed(&cfg, 9);
    let (be64, mut m64) = f64_model(&cfg, &w);
    m64.zero_grads(&be64).unwrap();
    let l64 = m64
        .forward_backward(&be64, &x, &y, b, t, 1.0 / (b * t) as f64)
        .unwrap();
    let g64 = m64.grads_f64(&be64).unwrap();

    for (bf16, loss_rtol, g_rtol, g_atol) in [(false, 1e-5, 1e-4, 1e-6), (true, 2e-2, 0.25, 2e-3)] {
        let be = CpuBackend::<f32>::new(1, bf16);
        let mut m = Gpt2::new(&be, &cfg, 0).unwrap();
        m.set_params_f64(&be, &w).unwrap();
        m.zero_grads(&be).unwrap();
        let l = m
            .forward_backward(&be, &x, &y, b, t, 1.0 / (b * t) as f64)
            .unwrap();
        let g = m.grads_f64(&be).unwrap();
        assert!(
            (l - l64).abs() <= loss_rtol * l64.abs(),
            "bf16={bf16}: loss {l} vs f64 {l64}"
        );
        let mut bad = Vec::new();
        for i in 0..g.len() {
            if (g[i] - g64[i]).abs() > g_atol + g_rtol * g64[i].abs() {
                bad.push((i, g[i], g64[i]));
            }
        }
        // bf16 rounds every activation to 8 bits of mantissa: a few per cent of the gradient entries
        // may exceed the elementwise bound; f32 none.
        let allowed = if bf16 { g.len() / 20 } else { 0 };
        assert!(
            bad.len() <= allowed,
            "bf16={bf16}: {} of {} gradient entries out of tolerance, first: {:?}",
            bad.len(),
            g.len(),
            &bad[..bad.len().min(5)]
        );
        // and the gradient direction agrees
        let dot: f64 = g.iter().zip(&g64).map(|(a, b)| a * b).sum();
        let na: f64 = g.iter().map(|a| a * a).sum::<f64>().sqrt();
        let nb: f64 = g64.iter().map(|a| a * a).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        assert!(
            cos > if bf16 { 0.999 } else { 0.999_999_9 },
            "bf16={bf16}: cosine {cos}"
        );
    }
}

#[test]
fn param_table_layout() {
    let mut cfg = ModelConfig::preset("124m").unwrap();
    cfg.bias = true;
    let t = ParamTable::new(&cfg);
    // GPT-2 small with biases and the unpadded vocabulary of 50,257 (llm.c pads it to 50,304)
    assert_eq!(t.total, 124_439_808);
    cfg.bias = false;
    let t = ParamTable::new(&cfg);
    let biases = 12 * (2 * 768 + 3 * 768 + 768 + 4 * 768 + 768) + 768;
    assert_eq!(t.total, 124_439_808 - biases);
    // entries tile the buffer exactly, in order
    let mut off = 0;
    for e in &t.entries {
        assert_eq!(e.offset, off, "{}", e.name);
        off += e.len();
        assert_eq!(e.decay, e.rows > 1 && e.cols > 1, "{}: decay group", e.name);
    }
    assert_eq!(off, t.total);
    // q, k, v are separate entries, contiguous thirds of the fused qkv weight
    for (l, lp) in t.layers.iter().enumerate() {
        let (q, k, v) = (&t.entries[lp.q], &t.entries[lp.k], &t.entries[lp.v]);
        assert_eq!((q.role, k.role, v.role), (Role::Q, Role::K, Role::V));
        assert_eq!(q.range().end, k.offset);
        assert_eq!(k.range().end, v.offset);
        assert_eq!(t.qkv(l), q.offset..v.range().end);
        assert_eq!(q.layer, Some(l));
    }
}

#[test]
fn init_statistics_follow_gpt2() {
    let cfg = ModelConfig {
        n_layer: 4,
        n_head: 2,
        n_embd: 64,
        seq_len: 8,
        vocab_size: 300,
        bias: true,
    };
    let t = ParamTable::new(&cfg);
    let w = t.init(&cfg, &mut Rng::new(1));
    let std = |r: std::ops::Range<usize>| {
        let x = &w[r];
        (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
    };
    let fc = &t.entries[t.layers[0].fc];
    let proj = &t.entries[t.layers[0].fc_proj];
    assert!(
        (std(fc.range()) - 0.02).abs() < 0.002,
        "fc std {}",
        std(fc.range())
    );
    let want = 0.02 / (8.0f64).sqrt();
    assert!(
        (std(proj.range()) - want).abs() < 0.1 * want,
        "c_proj std {}",
        std(proj.range())
    );
    assert!(w[t.r(t.layers[1].ln1_w)].iter().all(|&x| x == 1.0));
    assert!(w[t.r(t.layers[1].ln1_b.unwrap())].iter().all(|&x| x == 0.0));
}

#[test]
fn hf_safetensors_names_shapes_and_round_trip() {
    let cfg = tiny(false);
    let w = perturbed(&cfg, 3);
    let table = ParamTable::new(&cfg);
    let hf = rotadam::model::hf::to_hf(&cfg, &table, &w);
    let find = |n: &str| {
        hf.iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let c = cfg.n_embd;
    assert_eq!(find("wte.weight").shape, vec![cfg.vocab_size, c]);
    assert_eq!(find("h.1.attn.c_attn.weight").shape, vec![c, 3 * c]);
    assert_eq!(find("h.1.attn.c_attn.bias").shape, vec![3 * c]);
    assert_eq!(find("h.0.mlp.c_fc.weight").shape, vec![c, 4 * c]);
    assert_eq!(find("h.0.mlp.c_proj.weight").shape, vec![4 * c, c]);
    // Conv1D layout: HF c_attn.weight[i][j] = our qkv[j][i]
    let qkv = &w[table.qkv(1)];
    let hf_attn = &find("h.1.attn.c_attn.weight").values;
    assert_eq!(hf_attn[2 * 3 * c + 5], qkv[5 * c + 2]);
    // no-bias models export zero biases
    assert!(find("h.0.ln_1.bias").values.iter().all(|&x| x == 0.0));

    // write a checkpoint, read it back: same loss
    let be = CpuBackend::<f32>::new(1, false);
    let mut m = Gpt2::new(&be, &cfg, 0).unwrap();
    m.set_params_f64(&be, &w).unwrap();
    let (x, y) = batch(&cfg, 2, 4, 8);
    let l0 = m.loss(&be, &x, &y, 2, 4).unwrap();
    let dir = std::env::temp_dir().join(format!("rotadam-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tr = rotadam::config::TrainConfig::default();
    let opt = rotadam::optim::Optimizer::unrotated(&be, &tr, &m.table).unwrap();
    let state = crate::util::train_state(&cfg, 1, m.num_params(), l0);
    let ck = checkpoint::save(&be, &dir, &m, &opt, &state).unwrap();
    let path = ck.join("model.safetensors");
    let tensors = rotadam::tensors::read(&path).unwrap();
    assert!(tensors.contains_key("transformer.h.0.attn.c_attn.weight"));
    assert!(
        !tensors.keys().any(|k| k.contains("attn.q.")),
        "q/k/v must be fused on export"
    );
    let (flat, ignored) = rotadam::model::hf::from_hf(&path, &cfg, &table, &tensors).unwrap();
    assert_eq!(ignored, 0);
    let mut m2 = Gpt2::new(&be, &cfg, 99).unwrap();
    m2.set_params_f64(&be, &flat).unwrap();
    assert_eq!(m2.loss(&be, &x, &y, 2, 4).unwrap(), l0);

    // a model of another shape refuses the file, naming the tensor and both shapes
    let mut other = cfg.clone();
    other.n_embd = 12;
    let err = rotadam::model::hf::from_hf(&path, &other, &ParamTable::new(&other), &tensors)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("wte.weight"),
        "{err}"
    );
    assert!(err.contains("[11, 8]") && err.contains("[11, 12]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
