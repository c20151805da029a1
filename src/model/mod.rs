//! GPT-2: the parameter table over one flat buffer and the forward/backward over a backend.

pub mod gpt2;
pub mod hf;
pub mod params;

pub use gpt2::Gpt2;
pub use params::{ParamEntry, ParamTable, Role};
