//! The one integration-test binary: one module per topic.

mod data;
mod diagnose;
mod kron;
mod model;
mod ops;
mod optim;
mod plot;
mod rotation;
mod svd;
mod train;
