// TEMPORARY timing harness (to be deleted).
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::{AdamStep, Backend};
use std::time::Instant;

fn main() {
    let threads = 2;
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let bf16 = std::env::args().any(|a| a == "bf16");
    let be = CpuBackend::<f32>::new(threads, bf16);
    let (b, t, c, nh, l, v) = (4usize, 64usize, 768usize, 12usize, 12usize, 50257usize);
    let n = b * t;
    let mut seed = 1u64;
    let mut rnd = |len: usize| -> Vec<f32> {
        (0..len).map(|_| { seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1 }).collect()
    };
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
    let wte = rnd(v * c); let wpe = rnd(1024 * c);
    let x = rnd(n * c); let x4 = rnd(n * 4 * c); let qkvw = rnd(3 * c * c); let fcw = rnd(4 * c * c);
    let projw = rnd(c * c); let bias = rnd(4 * c); let lnw = rnd(c);
    let mut out = vec![0f32; n * c]; let mut out3 = vec![0f32; n * 3 * c]; let mut out4 = vec![0f32; n * 4 * c];
    let mut logits = vec![0f32; n * v]; let mut losses = vec![0f32; n];
    let mut mean = vec![0f32; n]; let mut rstd = vec![0f32; n];
    let mut att = vec![0f32; b * nh * t * t]; let mut scratch = vec![0f32; b * nh * t * t];
    let mut dwte = vec![0f32; v * c]; let mut dwpe = vec![0f32; 1024 * c];
    let mut d_c = vec![0f32; n * c]; let mut d_3c = vec![0f32; n * 3 * c]; let mut d_4c = vec![0f32; n * 4 * c];
    let mut dw = vec![0f32; 4 * c * c]; let mut db = vec![0f32; 4 * c]; let mut dlnw = vec![0f32; c];
    let mut timings: Vec<(&str, f64)> = Vec::new();
    macro_rules! time { ($name:expr, $reps:expr, $e:expr) => {{ let t0 = Instant::now(); for _ in 0..$reps { $e; } timings.push(($name, t0.elapsed().as_secs_f64() / $reps as f64)); }}; }
    for _pass in 0..2 {
    timings.clear();
    time!("encoder_forward", 1, be.encoder_forward(&mut out, &tokens, &wte, &wpe, b, t, c));
    time!("encoder_backward", 1, be.encoder_backward(&mut dwte, &mut dwpe[..t*c], &x, &tokens, b, t, c));
    time!("layernorm_forward x25", 25, be.layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &lnw, Some(&lnw), n, c));
    time!("layernorm_backward x25", 25, be.layernorm_backward(&mut d_c, &mut dlnw, Some(&mut db[..c]), &x, &x, &lnw, &mean, &rstd, n, c));
    time!("matmul_forward qkv x12", 12, be.matmul_forward(&mut out3, &x, &qkvw, Some(&bias[..3*c]), n, c, 3 * c));
    time!("matmul_forward proj x12", 12, be.matmul_forward(&mut out, &x, &projw, Some(&bias[..c]), n, c, c));
    time!("matmul_forward fc x12", 12, be.matmul_forward(&mut out4, &x, &fcw, Some(&bias), n, c, 4 * c));
    time!("matmul_forward fcproj x12", 12, be.matmul_forward(&mut out, &x4, &fcw, Some(&bias[..c]), n, 4 * c, c));
    time!("matmul_forward lmhead", 1, be.matmul_forward(&mut logits, &x, &wte, None, n, c, v));
    for _ in 0..3 { let t0 = Instant::now(); be.crossentropy_forward(&mut losses, &mut logits, &tokens, None, n, v); let mx = logits.iter().fold(0f32, |m, x| m.max(x.abs())); println!("ce nograd {:.1} ms max|logit| {mx}", t0.elapsed().as_secs_f64()*1e3); }
    time!("crossentropy_forward", 1, be.crossentropy_forward(&mut losses, &mut logits, &tokens, Some(1.0 / n as f32), n, v));
    time!("matmul_backward lmhead", 1, be.matmul_backward(Some(&mut d_c), &mut dwte, None, &logits, &x, &wte, n, c, v));
    time!("matmul_backward qkv x12", 12, be.matmul_backward(Some(&mut d_c), &mut dw[..3*c*c], Some(&mut db[..3*c]), &out3, &x, &qkvw, n, c, 3 * c));
    time!("matmul_backward proj x12", 12, be.matmul_backward(Some(&mut d_c), &mut dw[..c*c], Some(&mut db[..c]), &out, &x, &projw, n, c, c));
    time!("matmul_backward fc x12", 12, be.matmul_backward(Some(&mut d_c), &mut dw, Some(&mut db), &out4, &x, &fcw, n, c, 4 * c));
    time!("matmul_backward fcproj x12", 12, be.matmul_backward(Some(&mut d_4c), &mut dw, Some(&mut db[..c]), &out, &x4, &fcw, n, 4 * c, c));
    time!("attention_forward x12", 12, be.attention_forward(&mut out, &mut att, &out3, b, t, c, nh));
    time!("attention_backward x12", 12, be.attention_backward(&mut d_3c, &mut scratch, &out, &out3, &att, b, t, c, nh));
    time!("gelu_forward x12", 12, be.gelu_forward(&mut out4, &x4));
    time!("gelu_backward x12", 12, be.gelu_backward(&mut d_4c, &x4, &x4));
    time!("residual_forward x24", 24, be.residual_forward(&mut out, &x, &x));
    time!("add_inplace x48", 48, be.add_inplace(&mut d_c, &x));
    }
    let weights = [1.0, 1.0, 25.0, 25.0, 12.0, 12.0, 12.0, 12.0, 1.0, 1.0, 1.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 24.0, 48.0];
    let mut total = 0.0;
    for ((name, s), w) in timings.iter().zip(weights) { println!("{name:30} {:9.3} ms each, {:9.3} ms total", s * 1e3, s * w * 1e3); total += s * w; }
    // optimizer + grad norm over 124M params
    let np = 124_475_904usize;
    let mut p = rnd(np); let g = rnd(np); let mut m = vec![0f32; np]; let mut vv = vec![0f32; np];
    let hp = AdamStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, bias_correction1: 0.1, bias_correction2: 0.05 };
    be.adamw_step(&mut p, &mut m, &mut vv, &g, hp);
    let t0 = Instant::now(); be.adamw_step(&mut p, &mut m, &mut vv, &g, hp); let ta = t0.elapsed().as_secs_f64();
    let t0 = Instant::now(); let s = be.sum_squares(&g); let ts = t0.elapsed().as_secs_f64();
    let t0 = Instant::now(); be.fill(&mut vv, 0.0); let tf = t0.elapsed().as_secs_f64();
    println!("adamw_step 124M {:.1} ms, sum_squares {:.1} ms ({s:.3}), fill {:.1} ms", ta * 1e3, ts * 1e3, tf * 1e3);
    total += ta + ts + tf;
    println!("{} total ≈ {:.3} s", be.name(), total);
}
