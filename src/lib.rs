//! rotadam: train GPT-2 and measure how Adam behaves when the parameter space is rotated.
//!
//! See `docs/architecture.md` for the layout. The binary (`src/main.rs`) is a thin shell over [`cli`].

pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod diagnose;
pub mod error;
pub mod eval;
pub mod files;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod plot;
pub mod quadratic;
pub mod rng;
pub mod rotation;
pub mod run;
pub mod sweep;
pub mod tensors;

pub use error::{Error, Result};
