//! The one integration-test binary: one module per topic.

mod checkpoint;
mod cli;
mod cuda;
mod data;
mod diagnose;
mod eval;
mod house;
mod kron;
mod model;
mod muon;
mod ops;
mod optim;
mod parallel;
mod plot;
mod quadratic;
mod rotation;
mod runs;
mod soap;
mod svd;
mod sweep;
mod train;
mod util;
