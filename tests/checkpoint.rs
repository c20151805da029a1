//! Checkpoint directories as other programs see them: the Hugging Face `config.json` beside the weights,
//! every tensor `transformers` expects (zero biases for a model without biases), `transformers` loading a
//! checkpoint to the same logits (when Python has it), file permissions, temporary directories, and
//! `--init-from` with a checkpoint directory or a file for another model.

use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::backend::cpu::CpuBackend;
use rotadam::config::{ModelConfig, Precision, RunConfig};
use rotadam::model::hf::{hf_config, HF_PREFIX};
use rotadam::model::{Gpt2, ParamTable};
use rotadam::optim::Optimizer;
use rotadam::rng::Rng;
use rotadam::run::checkpoint;
use rotadam::run::train;
use rotadam::run::trainer::Trainer;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A tiny run of `steps` steps (checkpoint every step) in `precision`; returns its config.
fn tiny_run(root: &Path, name: &str, precision: Precision, bias: bool, steps: usize) -> RunConfig {
    let mut cfg = tiny_config(root, &root.join(name), steps);
    cfg.precision = precision;
    cfg.model.bias = bias;
    cfg.train.checkpoint_every = 1;
    train::train(&cfg, false).unwrap();
    cfg
}

/// Writes the checkpoint of step `step` of a seeded f32 model of `cfg` straight through
/// [`checkpoint::save`].
fn save_seeded(run_dir: &Path, cfg: &ModelConfig, step: usize) -> rotadam::Result<PathBuf> {
    let be = CpuBackend::<f32>::new(1, false);
    let m = Gpt2::new(&be, cfg, 0).unwrap();
    let tr = rotadam::config::TrainConfig::default();
    let opt = Optimizer::unrotated(&be, &tr, &m.table).unwrap();
    let state = crate::util::train_state(cfg, step, m.num_params(), 1.0);
    checkpoint::save(&be, run_dir, &m, &opt, &state)
}

/// The dtype of every tensor of a safetensors file (all must agree).
fn stored_dtype(path: &Path) -> Dtype {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dtypes: std::collections::BTreeSet<String> = st
        .tensors()
        .iter()
        .map(|(_, v)| format!("{:?}", v.dtype()))
        .collect();
    assert_eq!(dtypes.len(), 1, "{}: {dtypes:?}", path.display());
    st.tensors()[0].1.dtype()
}

/// The tensors of `GPT2LMHeadModel`'s state dict for `cfg` (the LM head tied, so not stored), with the
/// shapes `transformers` gives them: Conv1D weights (in, out).
fn gpt2_state_dict(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let c = cfg.n_embd;
    let mut out = vec![
        ("wte.weight".to_string(), vec![cfg.vocab_size, c]),
        ("wpe.weight".to_string(), vec![cfg.seq_len, c]),
    ];
    for l in 0..cfg.n_layer {
        for (name, shape) in [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.c_attn.weight", vec![c, 3 * c]),
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![c, 4 * c]),
            ("mlp.c_fc.bias", vec![4 * c]),
            ("mlp.c_proj.weight", vec![4 * c, c]),
            ("mlp.c_proj.bias", vec![c]),
        ] {
            out.push((format!("h.{l}.{name}"), shape));
        }
    }
    out.push(("ln_f.weight".to_string(), vec![c]));
    out.push(("ln_f.bias".to_string(), vec![c]));
    out.into_iter()
        .map(|(n, s)| (format!("{HF_PREFIX}{n}"), s))
        .collect()
}

/// GPT-2 124M's published `config.json` fields (those that describe the computation), and the same
/// fields for the tiny test model, whose vocabulary has no end-of-text token.
#[test]
fn hf_config_has_gpt2s_fields() {
    let gpt2 = ModelConfig::preset("124m").unwrap();
    let got = hf_config(&gpt2, Dtype::F32);
    let want = json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_ctx": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(got.get(k), Some(v), "{k} in {got:#}");
    }
    // the checkpoint is what the model computes: no dropout, no per-layer attention scaling
    for k in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
        assert_eq!(got[k], json!(0.0), "{k}");
    }
    assert_eq!(got["scale_attn_by_inverse_layer_idx"], json!(false));
    assert_eq!(got["reorder_and_upcast_attn"], json!(false));

    let tiny = ModelConfig {
        n_layer: 3,
        n_head: 2,
        n_embd: 16,
        seq_len: 8,
        vocab_size: 11,
        bias: false,
    };
    let got = hf_config(&tiny, Dtype::F64);
    for (k, v) in [
        ("vocab_size", json!(11)),
        ("n_positions", json!(8)),
        ("n_ctx", json!(8)),
        ("n_embd", json!(16)),
        ("n_layer", json!(3)),
        ("n_head", json!(2)),
        ("torch_dtype", json!("float64")),
        ("bos_token_id", Value::Null),
        ("eos_token_id", Value::Null),
    ] {
        assert_eq!(got[k], v, "{k} in {got:#}");
    }
}

/// A checkpoint written by a run holds a `config.json` whose fields are the run's model and whose
/// `torch_dtype` is that of the stored weights, and a `model.safetensors` with every tensor of GPT-2's
/// state dict in GPT-2's shapes (zero biases when the model has none), in both precisions.
#[test]
fn a_checkpoint_holds_an_hf_config_and_every_gpt2_tensor() {
    let root = tmp("ck-hf-config");
    synthetic_data(&root);
    for (precision, dtype, torch) in [
        (Precision::Fp32, Dtype::F32, "float32"),
        (Precision::Fp64, Dtype::F64, "float64"),
    ] {
        let cfg = tiny_run(&root, &format!("{precision:?}"), precision, false, 1);
        let m = &cfg.model;
        let dir = checkpoint::step_dir(&cfg.out, 1);
        let text = std::fs::read(dir.join("config.json")).expect("checkpoint has config.json");
        let got: Value = serde_json::from_slice(&text).unwrap();
        for (k, v) in [
            ("model_type", json!("gpt2")),
            ("vocab_size", json!(m.vocab_size)),
            ("n_positions", json!(m.seq_len)),
            ("n_embd", json!(m.n_embd)),
            ("n_layer", json!(m.n_layer)),
            ("n_head", json!(m.n_head)),
            ("layer_norm_epsilon", json!(1e-5)),
            ("torch_dtype", json!(torch)),
        ] {
            assert_eq!(got[k], v, "{precision:?}: {k} in {got:#}");
        }
        assert_eq!(got, hf_config(m, dtype));

        let path = dir.join("model.safetensors");
        assert_eq!(stored_dtype(&path), dtype, "{precision:?}");
        let tensors = rotadam::tensors::read(&path).unwrap();
        let want = gpt2_state_dict(m);
        let names: Vec<&String> = tensors.keys().collect();
        let mut want_names: Vec<&String> = want.iter().map(|(n, _)| n).collect();
        want_names.sort();
        assert_eq!(names, want_names, "{precision:?}");
        for (name, shape) in &want {
            let (s, values) = &tensors[name];
            assert_eq!(s, shape, "{precision:?}: {name}");
            if name.ends_with(".bias") {
                assert!(values.iter().all(|&x| x == 0.0), "{precision:?}: {name}");
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Every file of a checkpoint has the permissions of a file the process creates with `std::fs::write`
/// in the same directory (the umask's), not 0600.
#[cfg(unix)]
#[test]
fn checkpoint_files_get_the_permissions_of_ordinary_files() {
    use std::os::unix::fs::PermissionsExt;
    let root = tmp("ck-mode");
    let mut cfg = tiny_config(&root, &root, 1).model;
    cfg.bias = false;
    let dir = save_seeded(&root.join("run"), &cfg, 1).unwrap();
    let probe = dir.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let want = mode(&probe);
    std::fs::remove_file(&probe).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            mode(&p),
            want,
            "{}: mode {:o}, an ordinary file gets {want:o}",
            p.display(),
            mode(&p)
        );
        n += 1;
    }
    assert!(n >= 4, "{n} files");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A save that fails removes its temporary directory and returns the error; a save removes the
/// temporary directories a killed process left, and nothing else.
#[test]
fn checkpoint_temporary_directories_do_not_outlive_a_save() {
    let root = tmp("ck-tmp");
    let cfg = tiny_config(&root, &root, 1).model;
    let run = root.join("run");
    let checkpoints = run.join("checkpoints");
    // planted failure: a plain file where the checkpoint directory goes
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::write(checkpoints.join("step_3"), b"in the way").unwrap();
    let err = save_seeded(&run, &cfg, 3).unwrap_err().to_string();
    assert!(err.contains("step_3"), "{err}");
    assert!(
        !checkpoints.join(".step_3.tmp").exists(),
        "a failed save left its temporary directory"
    );
    std::fs::remove_file(checkpoints.join("step_3")).unwrap();

    // what a killed process leaves, and names that are not ours
    for d in [".step_2.tmp", ".step_99.tmp", ".step_x.tmp", "keep.tmp"] {
        std::fs::create_dir_all(checkpoints.join(d)).unwrap();
        std::fs::write(checkpoints.join(d).join("model.safetensors"), b"half").unwrap();
    }
    save_seeded(&run, &cfg, 4).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, [".step_x.tmp", "keep.tmp", "step_4"]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--init-from` takes a checkpoint directory (its model.safetensors), and a path that is neither such a
/// directory nor a file is an error naming the path and what was expected.
#[test]
fn init_from_takes_a_checkpoint_directory() {
    let root = tmp("ck-init-dir");
    synthetic_data(&root);
    let a = tiny_run(&root, "a", Precision::Fp32, false, 1);
    let dir = checkpoint::step_dir(&a.out, 1);
    let be = CpuBackend::<f32>::new(1, false);
    let mut b = tiny_config(&root, &root.join("b"), 1);
    b.init_from = Some(dir.clone());
    let t = Trainer::new(&be, &b).unwrap();
    let file = dir.join("model.safetensors");
    let tensors = rotadam::tensors::read(&file).unwrap();
    let table = ParamTable::new(&b.model);
    let (want, _) = rotadam::model::hf::from_hf(&file, &b.model, &table, &tensors).unwrap();
    assert!(
        t.model.params_f64(&be).unwrap() == want,
        "weights are not those of the checkpoint"
    );
    // a whole run through the CLI's path
    train::train(&b, false).unwrap();

    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (path, says) in [
        (empty.clone(), "without model.safetensors"),
        (root.join("nowhere"), "does not exist"),
    ] {
        let mut c = tiny_config(&root, &root.join("c"), 1);
        c.init_from = Some(path.clone());
        let err = Trainer::new(&be, &c).err().expect("an error").to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(says)
                && err.contains("expected")
                && err.contains("model.safetensors")
                && !err.contains("os error"),
            "{err}"
        );
    }
    // reading a directory as a safetensors file says so
    let err = rotadam::tensors::read(&empty).unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Weights for another model are refused, naming the tensors the model would drop (a deeper model's
/// layers, an unknown tensor, an untied LM head); zero biases for a model without biases, non-zero
/// ones (counted), the causal-mask buffers of older GPT-2 files and an LM head equal to `wte` are
/// accepted.
#[test]
fn init_from_refuses_tensors_the_model_does_not_use() {
    let root = tmp("ck-init-unused");
    synthetic_data(&root);
    let be = CpuBackend::<f32>::new(1, false);
    let mut deep = tiny_config(&root, &root.join("deep"), 1);
    deep.model.n_layer = 3;
    deep.train.checkpoint_every = 1;
    train::train(&deep, false).unwrap();
    let deep_file = checkpoint::step_dir(&deep.out, 1).join("model.safetensors");
    let mut b = tiny_config(&root, &root.join("b"), 1);
    b.init_from = Some(deep_file.clone());
    let err = Trainer::new(&be, &b).err().expect("an error").to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("12 tensor(s)")
            && err.contains("transformer.h.2.attn.c_attn.weight")
            && err.contains("transformer.h.2.mlp.c_proj.bias"),
        "{err}"
    );
    assert!(!err.contains("transformer.h.1."), "{err}");

    // non-zero biases into a model without biases: accepted and counted
    let biased = tiny_run(&root, "biased", Precision::Fp32, true, 1);
    let mut c = tiny_config(&root, &root.join("c"), 1);
    c.init_from = Some(checkpoint::step_dir(&biased.out, 1));
    let t = Trainer::new(&be, &c).unwrap();
    let ignored = t.init.as_ref().unwrap().ignored_biases;
    assert!(ignored > 0, "{ignored}");

    // extra tensors written next to a model's own
    let small = tiny_run(&root, "small", Precision::Fp32, false, 1);
    let file = checkpoint::step_dir(&small.out, 1).join("model.safetensors");
    let tensors = rotadam::tensors::read(&file).unwrap();
    let wte = tensors["transformer.wte.weight"].clone();
    let t = small.model.seq_len;
    let mask: Vec<f64> = (0..t * t)
        .map(|i| ((i % t) <= (i / t)) as u8 as f64)
        .collect();
    let variant = |extra: Vec<(&str, Vec<usize>, Vec<f64>)>, name: &str| -> PathBuf {
        let mut enc: Vec<rotadam::tensors::Encoded> = tensors
            .iter()
            .map(|(n, (s, v))| (n.clone(), s.clone(), f32_bytes(v)))
            .collect();
        for (n, s, v) in extra {
            enc.push((n.to_string(), s, f32_bytes(&v)));
        }
        let p = root.join(name);
        rotadam::tensors::write(&p, Dtype::F32, &enc, Default::default()).unwrap();
        p
    };
    let accepted = variant(
        vec![
            ("transformer.h.0.attn.bias", vec![1, 1, t, t], mask.clone()),
            ("transformer.h.1.attn.bias", vec![1, 1, t, t], mask.clone()),
            ("transformer.h.1.attn.masked_bias", vec![], vec![-1e4]),
            ("lm_head.weight", wte.0.clone(), wte.1.clone()),
        ],
        "buffers.safetensors",
    );
    let mut d = tiny_config(&root, &root.join("d"), 1);
    d.init_from = Some(accepted);
    Trainer::new(&be, &d).unwrap();
    let mut untied = wte.1.clone();
    untied[0] += 1.0;
    for (extra, name, names) in [
        (
            vec![("lm_head.weight", wte.0.clone(), untied)],
            "untied.safetensors",
            "lm_head.weight",
        ),
        (
            vec![("transformer.h.0.attn.q_norm.weight", vec![4], vec![1.0; 4])],
            "unknown.safetensors",
            "transformer.h.0.attn.q_norm.weight",
        ),
        (
            vec![("transformer.h.2.attn.bias", vec![1, 1, t, t], mask.clone())],
            "mask-of-a-third-layer.safetensors",
            "transformer.h.2.attn.bias",
        ),
    ] {
        let mut e = tiny_config(&root, &root.join("e"), 1);
        e.init_from = Some(variant(extra, name));
        let err = Trainer::new(&be, &e).err().expect("an error").to_string();
        assert!(
            err.contains(name) && err.contains("1 tensor(s)") && err.contains(names),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| (x as f32).to_le_bytes())
        .collect::<Vec<u8>>()
}

/// `python3` with `transformers` and Flax or PyTorch, when it has them: the frameworks it can load with.
fn python_frameworks(script: &str) -> Vec<String> {
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--probe")
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// −log p(k | tokens[..=i]) for every position i and token k, through the model's loss: the mean loss
/// of the prefix of length t with every target k, times t, less that of the prefix of length t − 1.
fn log_probs(be: &CpuBackend<f64>, m: &mut Gpt2<CpuBackend<f64>>, tokens: &[u32]) -> Vec<Vec<f64>> {
    let v = m.cfg.vocab_size;
    let mut out = vec![vec![0.0; v]; tokens.len()];
    let mut before = vec![0.0; v];
    for t in 1..=tokens.len() {
        for k in 0..v {
            let total = t as f64 * m.loss(be, &tokens[..t], &vec![k as u32; t], 1, t).unwrap();
            out[t - 1][k] = -(total - before[k]);
            before[k] = total;
        }
    }
    out
}

/// `transformers` loads a checkpoint directory with `from_pretrained(dir)` alone, every weight from the
/// file in the stored dtype, and computes the log-probabilities of the next token that the model does:
/// a model without biases in f64 (to 1e-9; measured with Flax: 4e-15) and one with biases in f32 (to
/// 1e-5; measured: 6e-8). Skipped when `python3` lacks `transformers` with Flax or PyTorch.
#[test]
fn transformers_loads_a_checkpoint_with_the_same_logits() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_load.py");
    let frameworks = python_frameworks(script);
    if frameworks.is_empty() {
        println!(
            "SKIPPED: python3 has no transformers with flax+jax or torch (pip install \"transformers<5\" flax jax)"
        );
        return;
    }
    let root = tmp("ck-transformers");
    synthetic_data(&root);
    let runs = [
        (tiny_run(&root, "f64", Precision::Fp64, false, 2), 1e-9),
        (tiny_run(&root, "f32", Precision::Fp32, true, 2), 1e-5),
    ];
    let mut rng = Rng::new(7);
    let mut checks = Vec::new();
    let mut ours = Vec::new();
    for (cfg, _) in &runs {
        let dir = checkpoint::step_dir(&cfg.out, 2);
        let seqs: Vec<Vec<u32>> = (0..2)
            .map(|_| {
                (0..cfg.model.seq_len)
                    .map(|_| rng.below(cfg.model.vocab_size as u64) as u32)
                    .collect()
            })
            .collect();
        let be = CpuBackend::<f64>::new(1, false);
        let mut m = Gpt2::new(&be, &cfg.model, 0).unwrap();
        let (flat, _) = rotadam::model::hf::load(&dir, &cfg.model, &m.table).unwrap();
        m.set_params_f64(&be, &flat).unwrap();
        ours.push(
            seqs.iter()
                .map(|s| log_probs(&be, &mut m, s))
                .collect::<Vec<_>>(),
        );
        checks.push(json!({"dir": dir, "tokens": seqs}));
    }
    let out = root.join("hf.json");
    let request = root.join("request.json");
    std::fs::write(
        &request,
        serde_json::to_vec(&json!({"out": out, "checks": checks})).unwrap(),
    )
    .unwrap();
    let o = std::process::Command::new("python3")
        .arg(script)
        .arg(&request)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for fw in &frameworks {
        for (i, ((cfg, tol), want)) in runs.iter().zip(&ours).enumerate() {
            let got: Vec<Vec<Vec<f64>>> =
                serde_json::from_value(result[fw][i]["log_probs"].clone()).unwrap();
            let label = format!("{fw}, {:?}", cfg.precision);
            assert_eq!(got.len(), want.len(), "{label}");
            for (s, (g, w)) in got.iter().zip(want).enumerate() {
                let g: Vec<f64> = g.concat();
                let w: Vec<f64> = w.concat();
                crate::util::assert_close(&format!("{label}, sequence {s}"), &g, &w, *tol, 0.0);
            }
        }
    }
    println!(
        "transformers ({}) computes the model's logits",
        frameworks.join(", ")
    );
    std::fs::remove_dir_all(&root).unwrap();
}
