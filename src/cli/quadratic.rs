//! `rotadam quadratic`: Xie et al. §4.1's rotated quadratic (`docs/experiments.md`).

use super::threads_help;
use crate::config::default_threads;
use crate::error::Result;
use crate::quadratic::{QuadConfig, QuadOpt};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct QuadraticArgs {
    /// Dimension d of x.
    #[arg(long, default_value_t = 500)]
    pub dim: usize,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Seeds (x₀ and x* draws) per setting.
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Spectrum of H: inv-square (λ_i = i⁻²), inv-sqrt (λ_i = i^(−1/2); a random rotation pushes
    /// ‖H‖₍₁,₁₎/d above ‖H‖₂) or flat (λ_i = 1, H = I).
    #[arg(long, default_value = "inv-square")]
    pub spectrum: String,
    /// Rotation angles θ, comma-separated [default: 0,0.01,0.03,0.1,0.3,1,3,10]; the paper's θ
    /// (S_ij ~ N(0, 1)) is θ/√d.
    #[arg(long, value_delimiter = ',')]
    pub thetas: Option<Vec<f64>>,
    /// Learning-rate grid, comma-separated [default: 1e-4 … 10 in half-decades].
    #[arg(long, value_delimiter = ',')]
    pub lrs: Option<Vec<f64>>,
    /// β₁ values, comma-separated: Adam, AdaSGD and SGD (momentum μ = β₁) each run at every one.
    #[arg(long, value_delimiter = ',', default_value = "0,0.9")]
    pub beta1s: Vec<f64>,
    /// Adam's and AdaSGD's β₂.
    #[arg(long, default_value_t = 0.99)]
    pub beta2: f64,
    /// Adam's and AdaSGD's ε.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Seed of the rotation generator A and of the x₀ / x* draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (table.md, results.json, quadratic.png, quadratic.svg).
    #[arg(long, default_value = "runs/quadratic")]
    pub out: PathBuf,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
}

impl QuadraticArgs {
    /// The validated experiment configuration.
    pub fn config(&self) -> Result<QuadConfig> {
        let mut c = QuadConfig::new(self.dim, self.steps, self.seeds);
        c.spectrum = self.spectrum.parse()?;
        if let Some(t) = &self.thetas {
            c.thetas = t.clone();
        }
        if let Some(l) = &self.lrs {
            c.lrs = l.clone();
        }
        c.optimizers = QuadOpt::grid(&self.beta1s);
        c.beta2 = self.beta2;
        c.eps = self.eps;
        c.seed = self.seed;
        c.threads = self.threads.unwrap_or_else(default_threads);
        c.validate()?;
        Ok(c)
    }
}
