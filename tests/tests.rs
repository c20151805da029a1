//! The one integration-test binary: one module per topic.

mod data;
mod model;
mod ops;
mod train;
