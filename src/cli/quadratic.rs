//! `rotadam quadratic`.

use super::threads_help;
use crate::config::default_threads;
use crate::error::Result;
use crate::quadratic::QuadConfig;
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
    /// Rotation angles θ, comma-separated [default: 0,0.01,0.03,0.1,0.3,1,3,10].
    #[arg(long, value_delimiter = ',')]
    pub thetas: Option<Vec<f64>>,
    /// Learning-rate grid, comma-separated [default: 1e-4 … 10 in half-decades].
    #[arg(long, value_delimiter = ',')]
    pub lrs: Option<Vec<f64>>,
    /// Adam's and AdaSGD's β₂.
    #[arg(long, default_value_t = 0.99)]
    pub beta2: f64,
    /// Adam's and AdaSGD's ε.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// SGD's momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
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
        if let Some(t) = &self.thetas {
            c.thetas = t.clone();
        }
        if let Some(l) = &self.lrs {
            c.lrs = l.clone();
        }
        c.beta2 = self.beta2;
        c.eps = self.eps;
        c.momentum = self.momentum;
        c.seed = self.seed;
        c.threads = self.threads.unwrap_or_else(default_threads);
        c.validate()?;
        Ok(c)
    }
}
