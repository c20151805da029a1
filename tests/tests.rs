//! The one integration-test binary: one module per topic.

mod data;
mod ops;
