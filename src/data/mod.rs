//! The data path: GPT-2 token files on disk → random training batches and fixed evaluation batches.
//!
//! - [`shard`]: memory-mapped token files in nanoGPT's format (`train.bin`/`val.bin`, flat uint16) or as
//!   llm.c shards (1024-byte header + uint16), validated on open; [`Dataset::open`] detects the format of a
//!   directory.
//! - [`loader`]: [`BatchSampler`], nanoGPT-style uniformly random windows that never cross a shard boundary,
//!   serialisable so a resumed run draws the same batches; [`fixed_batches`] for evaluation.
//! - [`mod@prepare`]: text and jsonl → `train.bin`/`val.bin`/`meta.json` with GPT-2's BPE, streaming and
//!   parallel, optionally with the vocabulary compacted to the ids that occur; [`demo_corpus`] and
//!   [`demo_corpus_compact`] build the bundled Shakespeare corpus on first use.
//! - [`vocab_usage`]: how many of a vocabulary's ids a dataset uses; [`meta_vocab_size`]: the compacted
//!   vocabulary a directory's `meta.json` records, read before the model is built.
//!
//! Formats, the demo corpus and the val split are described for users in `data/README.md`.

pub mod loader;
pub mod prepare;
pub mod shard;

pub use loader::{fixed_batches, Batch, BatchSampler, EVAL_SEED};
pub use prepare::{
    demo_corpus, demo_corpus_closed, demo_corpus_compact, is_val_document, meta_vocab_size,
    prepare, read_meta, read_meta_if_any, PrepareMeta, PrepareOptions, PrepareSummary, DEMO,
    DEMO_CLOSED, DEMO_CLOSED_MIN_COUNT, DEMO_COMPACT, GPT2_EOT, GPT2_VOCAB_SIZE,
};
pub use shard::{
    dataset_tokens, split_tokens, vocab_usage, write_flat, write_llmc_shard, DataFormat, Dataset,
    TokenSet, TokenShard, TokenSplit, VocabUsage,
};

/// The directory of token data a config names: `demo` is the embedded corpus, `demo-compact` the same
/// with a compact vocabulary and `demo-closed` with a closed one (each prepared on first use), anything
/// else a directory.
pub fn resolve(data: &str, quiet: bool) -> crate::error::Result<std::path::PathBuf> {
    match data {
        DEMO => demo_corpus(quiet),
        DEMO_COMPACT => demo_corpus_compact(quiet),
        DEMO_CLOSED => demo_corpus_closed(quiet),
        _ => Ok(std::path::PathBuf::from(data)),
    }
}
