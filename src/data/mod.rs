//! The data path: GPT-2 token files on disk → random training batches and fixed evaluation batches.
//!
//! - [`shard`]: memory-mapped token files in nanoGPT's format (`train.bin`/`val.bin`, flat uint16) or as
//!   llm.c shards (1024-byte header + uint16), validated on open; [`Dataset::open`] detects the format of a
//!   directory.
//! - [`loader`]: [`BatchSampler`], nanoGPT-style uniformly random windows that never cross a shard boundary,
//!   serialisable so a resumed run draws the same batches; [`fixed_batches`] for evaluation.
//! - [`mod@prepare`]: text and jsonl → `train.bin`/`val.bin`/`meta.json` with GPT-2's BPE, streaming and
//!   parallel; [`demo_corpus`] builds the bundled Shakespeare corpus on first use.
//!
//! Formats, the demo corpus and the val split are described for users in `data/README.md`.

pub mod loader;
pub mod prepare;
pub mod shard;

pub use loader::{fixed_batches, Batch, BatchSampler, EVAL_SEED};
pub use prepare::{
    demo_corpus, is_val_document, prepare, read_meta, PrepareMeta, PrepareOptions, PrepareSummary,
    GPT2_EOT,
};
pub use shard::{write_flat, write_llmc_shard, DataFormat, Dataset, TokenShard, TokenSplit};

/// The directory of token data a config names: `demo` is the embedded corpus (prepared on first use),
/// anything else a directory.
pub fn resolve(data: &str, quiet: bool) -> crate::error::Result<std::path::PathBuf> {
    if data == "demo" {
        demo_corpus(quiet)
    } else {
        Ok(std::path::PathBuf::from(data))
    }
}
