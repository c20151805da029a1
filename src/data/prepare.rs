//! Text → GPT-2 tokens in nanoGPT's format (`train.bin`, `val.bin`: flat little-endian uint16), plus the
//! embedded demo corpus.
//!
//! **Documents.** Inputs are files or directories (recursed in sorted order; names starting with `.` and
//! the output directory are skipped). A `*.jsonl` file holds one document per line, in its `text` field
//! (blank lines are skipped); any other file is one UTF-8 document, read whole.
//!
//! **Tokens.** Each document is encoded with GPT-2's BPE (`tiktoken_rs::r50k_base`, `encode_ordinary`, so
//! a literal `<|endoftext|>` in the text is ordinary text) and followed by the end-of-text token 50256, as
//! nanoGPT's `data/openwebtext/prepare.py` does.
//!
//! **Val split.** Document `i` (0-based, in input order) goes to val when `u_i < val_fraction`, where `u_i`
//! is the top 53 bits of the `i`-th output of SplitMix64 seeded with `seed` ([`is_val_document`]), read as a
//! number in [0, 1). The last document is the exception that keeps both splits non-empty: it goes to val if
//! no earlier document went to val, and to train if none went to train. With a single document, its last
//! `val_fraction` of tokens (rounded, at least one, at most all but one) go to val.
//!
//! **Streaming.** Documents are read in order and tokenized in chunks (256 documents or 64 MiB of text,
//! whichever comes first) in parallel with rayon; the tokens are appended to the outputs in document
//! order, so memory is bounded by a chunk whatever the corpus size. Outputs are written under temporary
//! names in the output directory and renamed into place at the end (`meta.json` last, after deleting the
//! old one), so a reader sees complete files or none, and a crash leaves no half-written `train.bin`.
//!
//! **Compact vocabulary** (`compact_vocab`, off by default). The token ids that occur in train ∪ val,
//! K of them, are renumbered 0..K−1 in increasing order of their GPT-2 id, and both files are rewritten
//! with the new ids (a second streaming pass, from one temporary file into another). `meta.json` then
//! records `vocab_size: K` and `gpt2_ids` (new id → GPT-2 id), and `eot` is the end-of-text token's new
//! id. A model trained on such data needs a vocabulary of at least K, and row `i` of its embedding is
//! GPT-2 token `gpt2_ids[i]`. Without the option the output, `meta.json` included, is what it always was.
//!
//! **Closed vocabulary** (`min_count`, with `compact_vocab`). Only the token ids that occur at least
//! `min_count` times in *train* are kept (end-of-text always), renumbered 0..K−2 as above; every other
//! token, val-only ones included, becomes one unknown-token id K−1, recorded as `unk` in `meta.json` (it
//! has no GPT-2 id, so `gpt2_ids` has K−1 entries). This is the closed-vocabulary convention of the Penn
//! Treebank and WikiText-2 language-model benchmarks (Mikolov et al. 2010; Merity et al. 2016); it shrinks
//! the embedding so that a small model can have GPT-2 124M's share of parameters in embeddings (see
//! `docs/experiments.md`). `summary` records how many tokens of each split became `unk`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use super::shard::{group_digits, write_u16_le, TokenSet};
use crate::error::{Error, Result};
use crate::rng::splitmix64;

/// GPT-2's `<|endoftext|>`, appended after every document.
pub const GPT2_EOT: u32 = 50256;
/// The number of GPT-2 token ids (`r50k_base`): 0..=50256.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// The tokenizer name recorded in `meta.json`.
pub const TOKENIZER: &str = "gpt2 (r50k_base)";
/// Bumped when the output of [`prepare`] changes for the same options; recorded in `meta.json`.
pub const PREPARE_VERSION: u32 = 1;
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;
/// The default split seed (also the demo corpus's: it puts 3 of the 35 plays and poems in val).
pub const DEFAULT_SEED: u64 = 0;

const CHUNK_DOCS: usize = 256;
const CHUNK_BYTES: usize = 64 << 20;

/// What to tokenize, where to, and how to split it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareOptions {
    /// Files or directories, in the order their documents are numbered.
    pub inputs: Vec<PathBuf>,
    /// Output directory (created if needed): `train.bin`, `val.bin`, `meta.json`.
    pub out: PathBuf,
    /// Fraction of documents that go to val, in [0, 1).
    pub val_fraction: f64,
    /// Seed of the val split.
    pub seed: u64,
    /// Renumber the token ids that occur to 0..K−1 (see the module docs). Absent from a `meta.json` written
    /// without it, older ones included, which therefore read as `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compact_vocab: bool,
    /// With `compact_vocab`: keep only the ids occurring at least this often in train, the rest becoming
    /// one unknown-token id (see the module docs). Absent: keep every id that occurs, no unknown token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    /// No progress output at all.
    #[serde(skip)]
    pub quiet: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            inputs: Vec::new(),
            out: PathBuf::new(),
            val_fraction: DEFAULT_VAL_FRACTION,
            seed: DEFAULT_SEED,
            compact_vocab: false,
            min_count: None,
            quiet: false,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl PrepareOptions {
    /// Whether `other` produces the same files: every field but `quiet`.
    pub fn same_recipe(&self, other: &PrepareOptions) -> bool {
        self.inputs == other.inputs
            && self.out == other.out
            && self.val_fraction == other.val_fraction
            && self.seed == other.seed
            && self.compact_vocab == other.compact_vocab
            && self.min_count == other.min_count
    }
}

/// What [`prepare`] did; also saved in `meta.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub files: usize,
    pub documents: u64,
    pub train_documents: u64,
    pub val_documents: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub bytes_read: u64,
    pub seconds: f64,
    /// True when there was one document and its tail went to val (it then counts in both splits).
    pub single_document_split: bool,
    /// K, the number of distinct token ids, when the vocabulary was compacted; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Closed vocabulary only: the train and val tokens that became the unknown token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk_train_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk_val_tokens: Option<u64>,
}

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareMeta {
    pub prepare_version: u32,
    pub tokenizer: String,
    /// The end-of-text id as it appears in the token files: [`GPT2_EOT`], or its new id when compacted.
    pub eot: u32,
    pub format: String,
    pub options: PrepareOptions,
    pub summary: PrepareSummary,
    /// Compacted data only: K, the vocabulary of the token files (ids 0..K−1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Compacted data only: `gpt2_ids[i]` is the GPT-2 id of token `i` (K entries, strictly increasing;
    /// K−1 with a closed vocabulary, whose last id is `unk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt2_ids: Option<Vec<u32>>,
    /// Closed vocabulary only (`min_count`): the unknown token's id, K−1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk: Option<u32>,
}

impl PrepareMeta {
    /// The mapping new id → GPT-2 id when the data is compacted (checked by [`read_meta`]).
    pub fn compact_vocab(&self) -> Option<&[u32]> {
        self.gpt2_ids.as_deref()
    }

    /// The token files' id mapped back to GPT-2's: itself when not compacted; `None` when out of range or
    /// the unknown token.
    pub fn to_gpt2(&self, id: u32) -> Option<u32> {
        match &self.gpt2_ids {
            Some(ids) => ids.get(id as usize).copied(),
            None => (id < GPT2_VOCAB_SIZE as u32).then_some(id),
        }
    }

    /// The compact fields must agree: both or neither, `vocab_size` = `gpt2_ids.len()` (+ 1 with `unk`,
    /// which must then be the last id), ids strictly increasing and below [`GPT2_VOCAB_SIZE`].
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::bad_file(path, field, msg));
        match (self.vocab_size, &self.gpt2_ids) {
            (None, None) if self.unk.is_some() => {
                bad("unk", "set, though the vocabulary is not compacted".into())
            }
            (None, None) => Ok(()),
            (Some(_), None) => bad("gpt2_ids", "missing, though vocab_size is set".into()),
            (None, Some(_)) => bad("vocab_size", "missing, though gpt2_ids is set".into()),
            (Some(k), Some(ids)) => {
                let unk = usize::from(self.unk.is_some());
                if k != ids.len() + unk || ids.is_empty() {
                    let with = if unk == 1 { " plus unk" } else { "" };
                    return bad(
                        "vocab_size",
                        format!("is {k} but gpt2_ids has {} entries{with}", ids.len()),
                    );
                }
                if let Some(u) = self.unk {
                    if u as usize != k - 1 {
                        return bad("unk", format!("is {u}; expected the last id, {}", k - 1));
                    }
                }
                let k = ids.len();
                if let Some(i) = ids.windows(2).position(|w| w[0] >= w[1]) {
                    let msg = format!(
                        "not strictly increasing: entry {} is {}, entry {} is {}",
                        i,
                        ids[i],
                        i + 1,
                        ids[i + 1]
                    );
                    return bad("gpt2_ids", msg);
                }
                let last = ids[k - 1];
                if last as usize >= GPT2_VOCAB_SIZE {
                    let msg = format!("holds {last}, not a GPT-2 id (below {GPT2_VOCAB_SIZE})");
                    return bad("gpt2_ids", msg);
                }
                Ok(())
            }
        }
    }
}

/// Reads and checks `dir/meta.json` (a `meta.json` written before the compact fields existed reads with
/// them absent).
pub fn read_meta(dir: &Path) -> Result<PrepareMeta> {
    let path = dir.join("meta.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let meta: PrepareMeta = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    meta.check(&path)?;
    Ok(meta)
}

/// `dir/meta.json` when `prepare` wrote it: `None` when there is none or when it is another tool's (a
/// JSON object without `prepare_version`); an error when it is `prepare`'s and malformed.
pub fn read_meta_if_any(dir: &Path) -> Result<Option<PrepareMeta>> {
    let path = dir.join("meta.json");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let ours = serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|v| v.get("prepare_version").is_some());
    if !ours {
        return Ok(None);
    }
    read_meta(dir).map(Some)
}

/// K when `dir` holds compacted data (its `meta.json` records `vocab_size`), else `None`: what a run's
/// `--vocab-size` defaults to. Reads `meta.json` only, not the token files.
pub fn meta_vocab_size(dir: &Path) -> Result<Option<usize>> {
    Ok(read_meta_if_any(dir)?.and_then(|m| m.vocab_size))
}

/// The val-split rule: document `index` goes to val when the top 53 bits of the `index`-th output of
/// SplitMix64 seeded with `seed`, as a number in [0, 1), are below `val_fraction`.
pub fn is_val_document(seed: u64, index: u64, val_fraction: f64) -> bool {
    // SplitMix64 adds its increment before mixing, so this state yields output number `index` (0-based).
    let mut state = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let u = (splitmix64(&mut state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    u < val_fraction
}

/// Tokenizes `opts.inputs` into `opts.out` (see the module docs for every rule).
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareSummary> {
    let start = Instant::now();
    if !(opts.val_fraction.is_finite() && (0.0..1.0).contains(&opts.val_fraction)) {
        return Err(Error::config(
            "val-fraction",
            format!("{} is not in [0, 1)", opts.val_fraction),
        ));
    }
    if opts.min_count.is_some() && !opts.compact_vocab {
        return Err(Error::config("min-count", "needs --compact-vocab"));
    }
    if opts.min_count == Some(0) {
        return Err(Error::config("min-count", "must be at least 1"));
    }
    fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let out_canon = fs::canonicalize(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let files = collect_files(&opts.inputs, &out_canon)?;
    if files.is_empty() {
        return Err(Error::config(
            "inputs",
            format!("no files found in {:?}", opts.inputs),
        ));
    }
    let mut total_bytes = 0;
    for f in &files {
        total_bytes += fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
    }
    let bpe = tiktoken_rs::r50k_base().map_err(|e| Error::config("tokenizer", e.to_string()))?;
    let mut progress = Progress::new(opts.quiet, total_bytes);
    progress.line(format!(
        "prepare: tokenizing {} file(s), {:.1} MB, into {}",
        files.len(),
        total_bytes as f64 / 1e6,
        opts.out.display()
    ));

    let mut splitter = Splitter {
        bpe,
        seed: opts.seed,
        val_fraction: opts.val_fraction,
        train: SplitOut::create(&opts.out, "train.bin")?,
        val: SplitOut::create(&opts.out, "val.bin")?,
        pending: None,
        documents: 0,
    };
    let mut chunk = Chunk::default();
    let mut bytes_read = 0u64;
    let mut take = |text: Option<String>, n: u64| -> Result<()> {
        bytes_read += n;
        progress.inc(n);
        if let Some(text) = text {
            chunk.push(text);
            if chunk.is_full() {
                splitter.push_chunk(&mut chunk)?;
            }
        }
        Ok(())
    };
    for file in &files {
        if file.extension().is_some_and(|e| e == "jsonl") {
            read_jsonl(file, &mut take)?;
        } else {
            let raw = fs::read(file).map_err(|e| Error::io(file, e))?;
            let n = raw.len() as u64;
            let text = String::from_utf8(raw).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                let msg = format!("not valid UTF-8 (first bad byte at offset {at})");
                Error::bad_file(file, "text", msg)
            })?;
            take(Some(text), n)?;
        }
    }
    splitter.push_chunk(&mut chunk)?;
    let documents = splitter.documents;
    let (mut train, mut val, single_document_split) = splitter.finish()?;
    let mut eot = GPT2_EOT;
    let mut unk = None;
    let mut unk_counts = None;
    let gpt2_ids = if opts.compact_vocab {
        let gpt2_ids: Vec<u32> = match opts.min_count {
            None => {
                let mut seen = train.seen.clone();
                seen.union_with(&val.seen);
                seen.iter().map(u32::from).collect()
            }
            Some(n) => (0..GPT2_VOCAB_SIZE as u32)
                .filter(|&t| train.counts[t as usize] >= n || t == GPT2_EOT)
                .collect(),
        };
        // K ≤ 50257 ids, so every new id (the unknown token's, K−1, included) fits uint16.
        let unk_id = gpt2_ids.len() as u16;
        let mut table = vec![unk_id; 1 << 16];
        for (new, &old) in gpt2_ids.iter().enumerate() {
            table[old as usize] = new as u16;
        }
        eot = u32::from(table[GPT2_EOT as usize]);
        if let Some(n) = opts.min_count {
            unk = Some(u32::from(unk_id));
            let dropped = |s: &SplitOut| -> u64 {
                (0..1usize << 16)
                    .filter(|&t| table[t] == unk_id)
                    .map(|t| s.counts[t])
                    .sum()
            };
            unk_counts = Some((dropped(&train), dropped(&val)));
            progress.line(format!(
                "prepare: closed vocabulary: the {} GPT-2 tokens occurring at least {n} times in train, \
                 plus one unknown token (id {unk_id}) for {} train and {} val tokens",
                group_digits(gpt2_ids.len() as u64),
                group_digits(unk_counts.unwrap_or_default().0),
                group_digits(unk_counts.unwrap_or_default().1),
            ));
        } else {
            progress.line(format!(
                "prepare: compacted the vocabulary to the {} of {GPT2_VOCAB_SIZE} GPT-2 tokens that occur",
                group_digits(gpt2_ids.len() as u64)
            ));
        }
        train = train.remap(&table)?;
        val = val.remap(&table)?;
        Some(gpt2_ids)
    } else {
        None
    };
    let vocab_size = gpt2_ids
        .as_ref()
        .map(|ids| ids.len() + usize::from(unk.is_some()));

    let mut summary = PrepareSummary {
        files: files.len(),
        documents,
        train_documents: train.documents,
        val_documents: val.documents,
        train_tokens: train.tokens,
        val_tokens: val.tokens,
        bytes_read,
        seconds: 0.0,
        single_document_split,
        vocab_size,
        unk_train_tokens: unk_counts.map(|c| c.0),
        unk_val_tokens: unk_counts.map(|c| c.1),
    };
    // Commit: the old meta.json goes first, so no meta.json ever describes bins it did not produce.
    let meta_path = opts.out.join("meta.json");
    match fs::remove_file(&meta_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&meta_path, e)),
        _ => {}
    }
    train.commit()?;
    val.commit()?;
    summary.seconds = start.elapsed().as_secs_f64();
    let meta = PrepareMeta {
        prepare_version: PREPARE_VERSION,
        tokenizer: TOKENIZER.to_string(),
        eot,
        format: "nanoGPT flat little-endian uint16".to_string(),
        options: opts.clone(),
        summary: summary.clone(),
        vocab_size,
        gpt2_ids,
        unk,
    };
    let json = meta_json(&meta).map_err(|source| Error::Json {
        path: meta_path.clone(),
        source,
    })?;
    let mut tmp = TempFile::new(&opts.out, "meta.json");
    fs::write(&tmp.path, json).map_err(|e| Error::io(&tmp.path, e))?;
    tmp.rename_to(&meta_path)?;
    progress.finish(format!(
        "prepare: {} documents -> {} train / {} val tokens ({} / {} documents) in {:.1} s",
        summary.documents,
        group_digits(summary.train_tokens),
        group_digits(summary.val_tokens),
        summary.train_documents,
        summary.val_documents,
        summary.seconds
    ));
    Ok(summary)
}

/// `meta` as pretty JSON, except `gpt2_ids`, written on one line at the end rather than one line per id.
fn meta_json(meta: &PrepareMeta) -> serde_json::Result<String> {
    let ids = meta.gpt2_ids.as_ref();
    let without_ids = PrepareMeta {
        gpt2_ids: None,
        ..meta.clone()
    };
    let mut json = serde_json::to_string_pretty(&without_ids)?;
    if let Some(ids) = ids {
        // A pretty object ends with "\n}"; the ids go in as its last field.
        let end = json.rfind('}').expect("a JSON object");
        json.truncate(end);
        let body = json.trim_end().to_string();
        json = format!(
            "{body},\n  \"gpt2_ids\": {}\n}}",
            serde_json::to_string(ids)?
        );
    }
    Ok(json)
}

/// `--data demo`: the demo corpus as GPT-2 tokens ([`demo_corpus`]).
pub const DEMO: &str = "demo";
/// `--data demo-compact`: the demo corpus with a compact vocabulary ([`demo_corpus_compact`]).
pub const DEMO_COMPACT: &str = "demo-compact";
/// `--data demo-closed`: the demo corpus with a closed vocabulary ([`demo_corpus_closed`]).
pub const DEMO_CLOSED: &str = "demo-closed";
/// The `min_count` of `demo-closed`: the 4,285 tokens occurring 20 times or more in the demo corpus's
/// train split cover 94% of it.
pub const DEMO_CLOSED_MIN_COUNT: u64 = 20;

/// The demo corpus (35 Shakespeare plays and poems, `data/shakespeare/*_gut.txt`), tokenized into
/// `data/cache/shakespeare/` under the crate root (or under `.` when the compiled-in root is gone).
/// Prepares it only when `train.bin`, `val.bin` or `meta.json` is missing or `meta.json` records other
/// options; returns the directory, ready for [`super::Dataset::open`].
pub fn demo_corpus(quiet: bool) -> Result<PathBuf> {
    demo(false, None, quiet)
}

/// The demo corpus with a compact vocabulary (`compact_vocab`), in `data/cache/shakespeare-compact/`;
/// otherwise as [`demo_corpus`].
pub fn demo_corpus_compact(quiet: bool) -> Result<PathBuf> {
    demo(true, None, quiet)
}

/// The demo corpus with a closed vocabulary (`min_count` [`DEMO_CLOSED_MIN_COUNT`]), in
/// `data/cache/shakespeare-closed/`; otherwise as [`demo_corpus`].
pub fn demo_corpus_closed(quiet: bool) -> Result<PathBuf> {
    demo(true, Some(DEMO_CLOSED_MIN_COUNT), quiet)
}

fn demo(compact_vocab: bool, min_count: Option<u64>, quiet: bool) -> Result<PathBuf> {
    // Threads of one process (parallel tests) take turns; separate processes are safe anyway, since every
    // output is replaced by an atomic rename of identical content.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if compiled.join("data").join("shakespeare").is_dir() {
        compiled.to_path_buf()
    } else {
        PathBuf::from(".")
    };
    let src = root.join("data").join("shakespeare");
    let name = match (compact_vocab, min_count) {
        (_, Some(_)) => "shakespeare-closed",
        (true, None) => "shakespeare-compact",
        (false, None) => "shakespeare",
    };
    let out = root.join("data").join("cache").join(name);
    let mut inputs = Vec::new();
    for entry in fs::read_dir(&src).map_err(|e| Error::io(&src, e))? {
        let path = entry.map_err(|e| Error::io(&src, e))?.path();
        if path.to_string_lossy().ends_with("_gut.txt") {
            inputs.push(path);
        }
    }
    inputs.sort();
    if inputs.is_empty() {
        return Err(Error::bad_file(&src, "demo corpus", "no *_gut.txt files"));
    }
    let opts = PrepareOptions {
        inputs,
        out: out.clone(),
        val_fraction: DEFAULT_VAL_FRACTION,
        seed: DEFAULT_SEED,
        compact_vocab,
        min_count,
        quiet,
    };
    let ready = out.join("train.bin").is_file()
        && out.join("val.bin").is_file()
        && read_meta(&out)
            .is_ok_and(|m| m.prepare_version == PREPARE_VERSION && m.options.same_recipe(&opts));
    if !ready {
        prepare(&opts)?;
    }
    Ok(out)
}

/// Input files in order: each input as given; directories recursed with entries sorted by name, skipping
/// hidden names and `skip_dir` (the output directory).
fn collect_files(inputs: &[PathBuf], skip_dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, skip_dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        if fs::canonicalize(dir).is_ok_and(|c| c == skip_dir) {
            return Ok(());
        }
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                entries.push(entry.path());
            }
        }
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, skip_dir, files)?;
            } else if path.is_file() {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            walk(input, skip_dir, &mut files)?;
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Calls `each(text, bytes)` for every line of a jsonl file: `text` is the line's `text` field, or `None`
/// for a blank line.
fn read_jsonl(path: &Path, mut each: impl FnMut(Option<String>, u64) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    for line_no in 1u64.. {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let field = || format!("line {line_no}");
        let line = std::str::from_utf8(&buf).map_err(|e| {
            let at = e.valid_up_to();
            Error::bad_file(
                path,
                field(),
                format!("not valid UTF-8 (first bad byte at column {})", at + 1),
            )
        })?;
        if line.trim().is_empty() {
            each(None, n as u64)?;
            continue;
        }
        let text = jsonl_text(line).map_err(|msg| Error::bad_file(path, field(), msg))?;
        each(Some(text), n as u64)?;
    }
    Ok(())
}

/// The `text` field of one jsonl line, taken out of the parsed object without a copy.
fn jsonl_text(line: &str) -> std::result::Result<String, String> {
    use serde_json::Value;
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("not a JSON object (expected {\"text\": \"...\"})".to_string());
    };
    match object.remove("text") {
        Some(Value::String(text)) => Ok(text),
        Some(other) => {
            let shown: String = other.to_string().chars().take(40).collect();
            Err(format!("the \"text\" field is not a string: {shown}"))
        }
        None => Err("no \"text\" field (expected {\"text\": \"...\"})".to_string()),
    }
}

/// Documents waiting to be tokenized together.
#[derive(Default)]
struct Chunk {
    docs: Vec<String>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.docs.push(text);
    }
    fn is_full(&self) -> bool {
        self.docs.len() >= CHUNK_DOCS || self.bytes >= CHUNK_BYTES
    }
}

/// Assigns tokenized documents to train or val, holding back the latest one so the last-document rules
/// can be applied at the end.
struct Splitter {
    bpe: CoreBPE,
    seed: u64,
    val_fraction: f64,
    train: SplitOut,
    val: SplitOut,
    /// The latest document's tokens; it is document number `documents - 1`.
    pending: Option<Vec<u32>>,
    documents: u64,
}

impl Splitter {
    fn push_chunk(&mut self, chunk: &mut Chunk) -> Result<()> {
        let bpe = &self.bpe;
        let encoded: Vec<Vec<u32>> = chunk
            .docs
            .par_iter()
            .map(|text| {
                let mut tokens = bpe.encode_ordinary(text);
                tokens.push(GPT2_EOT);
                tokens
            })
            .collect();
        *chunk = Chunk::default();
        for tokens in encoded {
            if let Some(prev) = self.pending.take() {
                let to_val = is_val_document(self.seed, self.documents - 1, self.val_fraction);
                self.out(to_val).write_document(&prev)?;
            }
            self.pending = Some(tokens);
            self.documents += 1;
        }
        Ok(())
    }

    fn out(&mut self, to_val: bool) -> &mut SplitOut {
        if to_val {
            &mut self.val
        } else {
            &mut self.train
        }
    }

    /// Places the last document; returns (train, val, whether a single document was split).
    fn finish(mut self) -> Result<(SplitOut, SplitOut, bool)> {
        let Some(last) = self.pending.take() else {
            return Err(Error::config(
                "inputs",
                "no documents (every jsonl line was blank?)",
            ));
        };
        if self.documents == 1 {
            if last.len() < 2 {
                let msg = "a single empty document cannot be split into train and val";
                return Err(Error::config("inputs", msg));
            }
            let n_val =
                ((last.len() as f64 * self.val_fraction).round() as usize).clamp(1, last.len() - 1);
            let cut = last.len() - n_val;
            self.train.write_document(&last[..cut])?;
            self.val.write_document(&last[cut..])?;
            return Ok((self.train, self.val, true));
        }
        let to_val = if self.val.documents == 0 {
            true
        } else if self.train.documents == 0 {
            false
        } else {
            is_val_document(self.seed, self.documents - 1, self.val_fraction)
        };
        self.out(to_val).write_document(&last)?;
        Ok((self.train, self.val, false))
    }
}

/// One output file being written under a temporary name.
struct SplitOut {
    tmp: TempFile,
    dest: PathBuf,
    writer: BufWriter<File>,
    documents: u64,
    tokens: u64,
    /// The token ids written so far.
    seen: TokenSet,
    /// How often each id was written (before a remap).
    counts: Vec<u64>,
}

impl SplitOut {
    fn create(dir: &Path, name: &str) -> Result<SplitOut> {
        let tmp = TempFile::new(dir, name);
        let file = File::create(&tmp.path).map_err(|e| Error::io(&tmp.path, e))?;
        Ok(SplitOut {
            writer: BufWriter::with_capacity(1 << 20, file),
            tmp,
            dest: dir.join(name),
            documents: 0,
            tokens: 0,
            seen: TokenSet::new(),
            counts: vec![0; 1 << 16],
        })
    }

    fn write_document(&mut self, tokens: &[u32]) -> Result<()> {
        // GPT-2 ids are < 50257, so they fit uint16.
        let tokens16 = tokens.iter().map(|&t| t as u16);
        self.seen.extend(tokens16.clone());
        for t in tokens16.clone() {
            self.counts[usize::from(t)] += 1;
        }
        write_u16_le(&mut self.writer, tokens16).map_err(|e| Error::io(&self.tmp.path, e))?;
        self.documents += 1;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// The same file with every id `t` replaced by `table[t]`, streamed into a new temporary file (the
    /// old one is deleted); the counts carry over, `seen` becomes the new ids.
    fn remap(self, table: &[u16]) -> Result<SplitOut> {
        let SplitOut {
            tmp: old,
            dest,
            writer,
            documents,
            tokens,
            seen,
            counts,
        } = self;
        let file = writer.into_inner();
        drop(file.map_err(|e| Error::io(&old.path, e.into_error()))?);
        let mut reader = File::open(&old.path).map_err(|e| Error::io(&old.path, e))?;
        let tmp = TempFile::new(
            dest.parent().expect("an output file has a directory"),
            &dest.file_name().expect("a file name").to_string_lossy(),
        );
        let file = File::create(&tmp.path).map_err(|e| Error::io(&tmp.path, e))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = fill(&mut reader, &mut buf).map_err(|e| Error::io(&old.path, e))?;
            if n % 2 != 0 {
                let msg = "odd length: the temporary token file changed while being written";
                return Err(Error::bad_file(&old.path, "length", msg));
            }
            for pair in buf[..n].chunks_exact_mut(2) {
                let t = table[usize::from(u16::from_le_bytes([pair[0], pair[1]]))];
                pair.copy_from_slice(&t.to_le_bytes());
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| Error::io(&tmp.path, e))?;
            if n < buf.len() {
                break;
            }
        }
        let mut new_seen = TokenSet::new();
        new_seen.extend(seen.iter().map(|t| table[usize::from(t)]));
        Ok(SplitOut {
            tmp,
            dest,
            writer,
            documents,
            tokens,
            seen: new_seen,
            counts,
        })
    }

    fn commit(mut self) -> Result<()> {
        let file = self.writer.into_inner();
        let file = file.map_err(|e| Error::io(&self.tmp.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp.path, e))?;
        self.tmp.rename_to(&self.dest)
    }
}

/// Reads into `buf` until it is full or the input ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A file under a unique temporary name, deleted on drop unless renamed into place.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    fn new(dir: &Path, name: &str) -> TempFile {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempFile {
            path: dir.join(format!(".{name}.tmp-{}-{n}", std::process::id())),
            renamed: false,
        }
    }

    fn rename_to(&mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A byte-count progress bar on a terminal; on a non-terminal stderr a few plain lines instead; nothing
/// at all when quiet (`prepare --quiet` prints only errors and, from the command line, the summary).
struct Progress {
    bar: ProgressBar,
    quiet: bool,
    plain: bool,
    total: u64,
    done: u64,
    next_quarter: u64,
}

impl Progress {
    fn new(quiet: bool, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if quiet || !terminal {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(total);
            let template = "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message("tokenizing");
            bar
        };
        Progress {
            bar,
            quiet,
            plain: !quiet && !terminal,
            total,
            done: 0,
            next_quarter: 1,
        }
    }

    /// A plain line on a non-terminal; above the bar on a terminal; nothing when quiet.
    fn line(&self, msg: String) {
        if self.quiet {
            return;
        }
        if self.plain {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        self.done += n;
        let quarter = (self.done * 4 / self.total.max(1)).min(3);
        if self.plain && quarter >= self.next_quarter {
            eprintln!("prepare: {}% of the text read", 25 * quarter);
            self.next_quarter = quarter + 1;
        }
    }

    fn finish(&self, msg: String) {
        self.bar.finish_and_clear();
        self.line(msg);
    }
}
