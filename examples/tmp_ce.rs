use rotadam::backend::cpu;
use std::time::Instant;
fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(2).build_global().unwrap();
    let (n, v) = (256usize, 50257usize);
    let scale: f32 = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(1e-3);
    let logits0: Vec<f32> = (0..n * v).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * scale).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| i * 13 % v as u32).collect();
    let mut losses = vec![0f32; n];
    if std::env::args().any(|a| a == "gemm") {
        let a = vec![0.5f32; 256 * 256]; let mut c = vec![0f32; 256 * 256];
        use rotadam::backend::Scalar;
        rayon::broadcast(|_| f32::gemm(&mut c.clone(), &a, &a, 256, 256, 256, false, false, false, 1));
        f32::gemm(&mut c, &a, &a, 256, 256, 256, false, false, false, 2);
    }
    for _ in 0..3 {
        let mut lg = logits0.clone();
        let t0 = Instant::now();
        cpu::crossentropy_forward(&mut losses, &mut lg, &targets, Some(1.0 / n as f32), n, v);
        println!("ce grad {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        cpu::crossentropy_forward(&mut losses, &mut lg, &targets, None, n, v);
        println!("ce nograd {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let mut o = vec![0f32; n * 3072];
        let x: Vec<f32> = (0..n * 3072).map(|i| ((i % 1000) as f32 - 500.0) * 1e-2).collect();
        let t0 = Instant::now();
        cpu::gelu_forward(&mut o, &x, false);
        println!("gelu {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
}
