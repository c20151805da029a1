//! The learning-rate schedule: linear warm-up, then cosine decay to `min_lr` at the last step
//! (nanoGPT's `get_lr`, with `lr_decay_iters` = the run's total steps).

/// Learning rate for optimizer step `it` (0-based).
pub fn lr_at(it: usize, lr: f64, min_lr: f64, warmup: usize, total: usize) -> f64 {
    if it < warmup {
        return lr * (it + 1) as f64 / (warmup + 1) as f64;
    }
    if it >= total || total <= warmup {
        return min_lr;
    }
    let ratio = (it - warmup) as f64 / (total - warmup) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    min_lr + coeff * (lr - min_lr)
}
