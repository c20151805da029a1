//! Token files on disk, memory-mapped: one file is a [`TokenShard`], the ordered shards of one split are a
//! [`TokenSplit`], and a directory holding a train and a val split is a [`Dataset`].
//!
//! Two formats are read, both little-endian uint16 GPT-2 token ids:
//! - **nanoGPT** (`data/openwebtext/prepare.py`): `train.bin` and `val.bin`, each a flat array of uint16
//!   with no header. One shard per split.
//! - **llm.c token shards** (`dev/data/data_common.py`): a 1024-byte header of 256 int32 — `[0]` magic
//!   20240520, `[1]` version 1, `[2]` token count N, the rest zero — then N uint16; the file is exactly
//!   1024 + 2·N bytes. A split is every file of the directory matching `*_train_*.bin` or `*_train.bin`
//!   (`*_val_*.bin` or `*_val.bin` for val), sorted by name (`fineweb_train_000001.bin`, …;
//!   `tiny_shakespeare_train.bin`).
//!
//! Every check that can be made when a file is opened is made then, with a message naming the file, the
//! field and the expectation: sizes against the header, magic, version, and every token id against the
//! vocabulary (one parallel max over the mapping).
//!
//! A directory that `prepare --compact-vocab` wrote says so in its `meta.json` (`vocab_size: K` and the
//! mapping `gpt2_ids`); [`Dataset::open`] reads it ([`Dataset::meta_vocab`], [`Dataset::gpt2_ids`]) and
//! refuses a model vocabulary below K. [`vocab_usage`] counts the distinct ids that occur.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `header[0]` of an llm.c uint16 token shard.
pub const LLMC_MAGIC: i32 = 20240520;
/// `header[1]` of an llm.c uint16 token shard.
pub const LLMC_VERSION: i32 = 1;
/// The llm.c header: 256 little-endian int32.
pub const LLMC_HEADER_BYTES: usize = 1024;
/// Name patterns (`*` = any run of characters) of llm.c train shards.
pub const LLMC_TRAIN_PATTERNS: [&str; 2] = ["*_train_*.bin", "*_train.bin"];
/// Name patterns of llm.c val shards.
pub const LLMC_VAL_PATTERNS: [&str; 2] = ["*_val_*.bin", "*_val.bin"];

/// The on-disk layout of a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// nanoGPT: a flat little-endian uint16 array, `train.bin` / `val.bin`.
    NanoGpt,
    /// llm.c: a 1024-byte header (magic 20240520, version 1, token count), then uint16 tokens.
    LlmC,
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataFormat::NanoGpt => "nanoGPT flat uint16",
            DataFormat::LlmC => "llm.c shards",
        })
    }
}

/// One memory-mapped token file; [`TokenShard::tokens`] borrows the tokens straight from the mapping.
///
/// # Safety
///
/// The file is mapped read-only with `mmap`, not copied. The contract, which the type cannot enforce, is
/// that **no one truncates or modifies the file while it is mapped**: truncation makes reads of the lost
/// pages fault (SIGBUS), and a write changes the contents of a `&[u16]` that Rust treats as immutable
/// (tokens checked against the vocabulary at open time could then be out of range). Replacing the file by
/// an atomic rename (as [`crate::data::prepare()`] does) is safe: the mapping keeps the old inode alive.
#[derive(Debug)]
pub struct TokenShard {
    path: PathBuf,
    format: DataFormat,
    map: Mmap,
    /// Bytes before the first token: 0 (nanoGPT) or [`LLMC_HEADER_BYTES`] (llm.c).
    offset: usize,
    /// Number of tokens.
    len: usize,
    /// The ids that occur, from the one pass over the tokens at open time (which checks the vocabulary
    /// and serves [`vocab_usage`] without reading the file again).
    ids: TokenSet,
}

impl TokenShard {
    /// Opens and validates a token file: its size against its format (and header), then every token id
    /// against `vocab_size`.
    pub fn open(path: &Path, format: DataFormat, vocab_size: usize) -> Result<TokenShard> {
        if cfg!(target_endian = "big") {
            return Err(Error::bad_file(
                path,
                "byte order",
                "token files are little-endian and this host is big-endian",
            ));
        }
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let (offset, len) = match format {
            DataFormat::NanoGpt => {
                if bytes == 0 {
                    return Err(Error::bad_file(
                        path,
                        "length",
                        "the file is empty; a flat uint16 token file needs at least one token",
                    ));
                }
                if bytes % 2 != 0 {
                    return Err(Error::bad_file(
                        path,
                        "length",
                        format!(
                            "{bytes} bytes is odd; a flat uint16 token file has an even length"
                        ),
                    ));
                }
                (0, bytes / 2)
            }
            DataFormat::LlmC => (LLMC_HEADER_BYTES, read_llmc_header(path, &mut file, bytes)?),
        };
        let len = usize::try_from(len).map_err(|_| {
            Error::bad_file(
                path,
                "length",
                "too large for this platform's address space",
            )
        })?;
        // SAFETY: the mapping is read-only and lives as long as `TokenShard`. Memory safety needs the file
        // not to be truncated or modified while mapped; that contract is documented on `TokenShard`
        // (# Safety) and kept by every writer in this crate, which replaces files by atomic rename.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() != offset + 2 * len {
            return Err(Error::bad_file(
                path,
                "length",
                format!(
                    "{bytes} bytes at open but {} bytes when mapped: the file changed",
                    map.len()
                ),
            ));
        }
        let mut shard = TokenShard {
            path: path.to_path_buf(),
            format,
            map,
            offset,
            len,
            ids: TokenSet::new(),
        };
        shard.ids = token_set(shard.tokens());
        shard.check_vocab(vocab_size)?;
        Ok(shard)
    }

    /// The tokens, borrowed from the mapping (no copy).
    pub fn tokens(&self) -> &[u16] {
        // The mapping is page-aligned and the offset (0 or 1024) is even, so the cast cannot fail.
        bytemuck::cast_slice(&self.map[self.offset..self.offset + 2 * self.len])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> DataFormat {
        self.format
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false for an opened shard (empty files are rejected); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids that occur in this shard.
    pub fn ids(&self) -> &TokenSet {
        &self.ids
    }

    /// Every id must be < `vocab_size`: the largest id of the set made at open time, then, only on
    /// failure, a search for the first offending position.
    fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        if vocab_size > usize::from(u16::MAX) {
            return Ok(());
        }
        let tokens = self.tokens();
        let max = self.ids.max().unwrap_or(0);
        if usize::from(max) < vocab_size {
            return Ok(());
        }
        let pos = tokens
            .par_iter()
            .position_first(|&t| usize::from(t) >= vocab_size)
            .expect("max >= vocab_size, so some token is");
        Err(Error::bad_file(
            &self.path,
            "token id",
            format!(
                "token {pos} (byte offset {}) is {}, not below the model's vocab size {vocab_size}; \
                 the file's largest token id is {max}, so the model needs --vocab-size {} or more \
                 (50257 for GPT-2's tokenizer; the `tiny` preset's vocabulary is 64)",
                self.offset + 2 * pos,
                tokens[pos],
                usize::from(max) + 1
            ),
        ))
    }
}

/// Reads and checks an llm.c header; returns the token count.
fn read_llmc_header(path: &Path, file: &mut File, bytes: u64) -> Result<u64> {
    if bytes < LLMC_HEADER_BYTES as u64 {
        return Err(Error::bad_file(
            path,
            "header",
            format!(
                "the file has {bytes} bytes, fewer than the {LLMC_HEADER_BYTES}-byte llm.c header"
            ),
        ));
    }
    let mut raw = [0u8; LLMC_HEADER_BYTES];
    file.read_exact(&mut raw).map_err(|e| Error::io(path, e))?;
    let word = |i: usize| i32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let magic = word(0);
    if magic != LLMC_MAGIC {
        let hint = match magic {
            20240801 => " (an llm.c Llama-3 uint32 shard, which this reader does not support)",
            20240326 => " (an llm.c model checkpoint, not a token shard)",
            _ => "",
        };
        return Err(Error::bad_file(
            path,
            "header[0] magic",
            format!("expected {LLMC_MAGIC} (llm.c uint16 token shard), found {magic}{hint}"),
        ));
    }
    let version = word(1);
    if version != LLMC_VERSION {
        return Err(Error::bad_file(
            path,
            "header[1] version",
            format!("expected {LLMC_VERSION}, found {version}"),
        ));
    }
    let ntok = word(2);
    if ntok <= 0 {
        return Err(Error::bad_file(
            path,
            "header[2] token count",
            format!("is {ntok}; a shard needs at least one token"),
        ));
    }
    let ntok = ntok as u64;
    let expected = LLMC_HEADER_BYTES as u64 + 2 * ntok;
    if bytes != expected {
        let what = if bytes < expected { "short" } else { "long" };
        return Err(Error::bad_file(
            path,
            "length",
            format!("header says {ntok} tokens ({expected} bytes) but the file has {bytes} bytes (too {what})"),
        ));
    }
    Ok(ntok)
}

/// The ordered shards of one split (`train` or `val`), read as one sequence of documents-with-boundaries:
/// a sample never crosses from one shard into the next.
#[derive(Debug)]
pub struct TokenSplit {
    name: String,
    shards: Vec<TokenShard>,
    len: usize,
}

impl TokenSplit {
    pub fn new(name: impl Into<String>, shards: Vec<TokenShard>) -> TokenSplit {
        let len = shards.iter().map(TokenShard::len).sum();
        TokenSplit {
            name: name.into(),
            shards,
            len,
        }
    }

    /// `"train"` or `"val"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shards(&self) -> &[TokenShard] {
        &self.shards
    }

    /// Total tokens over all shards.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens in the longest shard: the longest sample this split can serve is one fewer.
    pub fn longest_shard(&self) -> usize {
        self.shards.iter().map(TokenShard::len).max().unwrap_or(0)
    }
}

/// A directory with a train and a val split, in either format.
#[derive(Debug)]
pub struct Dataset {
    pub train: TokenSplit,
    pub val: TokenSplit,
    dir: PathBuf,
    format: DataFormat,
    /// `gpt2_ids` of a compacted directory's `meta.json`.
    gpt2_ids: Option<Vec<u32>>,
    /// `vocab_size` of a compacted directory's `meta.json`: K, one more than `gpt2_ids` when the
    /// vocabulary is closed (the unknown token).
    meta_vocab: Option<usize>,
}

impl Dataset {
    /// Opens `dir`: `train.bin` + `val.bin` make it nanoGPT; otherwise llm.c shards matching
    /// [`LLMC_TRAIN_PATTERNS`] / [`LLMC_VAL_PATTERNS`]. Every shard is validated (see [`TokenShard::open`])
    /// and each split must hold `seq_len + 1` tokens in one shard (inputs plus the shifted target).
    pub fn open(dir: &Path, vocab_size: usize, seq_len: usize) -> Result<Dataset> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::bad_file(
                    dir,
                    "data directory",
                    "is a file; point --data at the directory holding train.bin/val.bin or llm.c shards",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::bad_file(dir, "data directory", "does not exist"))
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        let meta = super::prepare::read_meta_if_any(dir)?;
        let (gpt2_ids, meta_vocab) = match meta {
            Some(m) => (m.gpt2_ids, m.vocab_size),
            None => (None, None),
        };
        if let Some(k) = meta_vocab {
            if vocab_size < k {
                return Err(Error::bad_file(
                    dir.join("meta.json"),
                    "vocab_size",
                    format!(
                        "the token files are compacted to {k} ids (prepare --compact-vocab), more than \
                         the model's vocab size {vocab_size}; the model needs --vocab-size {k} or more"
                    ),
                ));
            }
        }
        let (train_bin, val_bin) = (dir.join("train.bin"), dir.join("val.bin"));
        let (format, train, val) = if train_bin.is_file() && val_bin.is_file() {
            let open = |p: &Path| TokenShard::open(p, DataFormat::NanoGpt, vocab_size);
            let train = TokenSplit::new("train", vec![open(&train_bin)?]);
            let val = TokenSplit::new("val", vec![open(&val_bin)?]);
            (DataFormat::NanoGpt, train, val)
        } else {
            let train_paths = glob_dir(dir, &LLMC_TRAIN_PATTERNS)?;
            let val_paths = glob_dir(dir, &LLMC_VAL_PATTERNS)?;
            if train_paths.is_empty() || val_paths.is_empty() {
                let found = match (train_bin.is_file(), val_bin.is_file()) {
                    (true, false) => "train.bin without val.bin".to_string(),
                    (false, true) => "val.bin without train.bin".to_string(),
                    _ if !train_paths.is_empty() => {
                        format!("{} llm.c train shard(s), no val shard", train_paths.len())
                    }
                    _ if !val_paths.is_empty() => {
                        format!("{} llm.c val shard(s), no train shard", val_paths.len())
                    }
                    _ => "none of these".to_string(),
                };
                return Err(Error::bad_file(
                    dir,
                    "data files",
                    format!(
                        "looked for train.bin + val.bin (nanoGPT flat uint16) or {} + {} (llm.c shards); \
                         found {found}",
                        LLMC_TRAIN_PATTERNS.join(" | "),
                        LLMC_VAL_PATTERNS.join(" | ")
                    ),
                ));
            }
            let open_all = |paths: Vec<PathBuf>| -> Result<Vec<TokenShard>> {
                paths
                    .iter()
                    .map(|p| TokenShard::open(p, DataFormat::LlmC, vocab_size))
                    .collect()
            };
            let train = TokenSplit::new("train", open_all(train_paths)?);
            let val = TokenSplit::new("val", open_all(val_paths)?);
            (DataFormat::LlmC, train, val)
        };
        for split in [&train, &val] {
            let longest = split.longest_shard();
            if seq_len + 1 > longest {
                let (path, of) = match split.shards() {
                    [one] => (one.path().to_path_buf(), String::new()),
                    many => (
                        dir.to_path_buf(),
                        format!(" (longest of {} shards)", many.len()),
                    ),
                };
                return Err(Error::bad_file(
                    path,
                    "seq-len",
                    format!(
                        "seq-len {seq_len} needs at least {} tokens in one shard; {} has {longest}{of}",
                        seq_len + 1,
                        split.name()
                    ),
                ));
            }
        }
        Ok(Dataset {
            train,
            val,
            dir: dir.to_path_buf(),
            format,
            gpt2_ids,
            meta_vocab,
        })
    }

    /// K when the directory's `meta.json` says the data is compacted (`prepare --compact-vocab`): the
    /// token files hold ids 0..K−1, every one of which occurs (with a closed vocabulary, the last is the
    /// unknown token). `None` for GPT-2 ids.
    pub fn meta_vocab(&self) -> Option<usize> {
        self.meta_vocab
    }

    /// The compacted data's mapping: token `i` of the files is GPT-2 token `gpt2_ids()[i]` (with a closed
    /// vocabulary, one entry fewer than [`Dataset::meta_vocab`]: the unknown token has no GPT-2 id).
    pub fn gpt2_ids(&self) -> Option<&[u32]> {
        self.gpt2_ids.as_deref()
    }

    pub fn format(&self) -> DataFormat {
        self.format
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One line for logs, e.g. `nanoGPT flat uint16 at data/cache/shakespeare: 1,234,567 train / 123,456 val
    /// tokens`.
    pub fn describe(&self) -> String {
        let dir = self.dir.display();
        let (train, val) = (
            group_digits(self.train.len() as u64),
            group_digits(self.val.len() as u64),
        );
        match self.format {
            DataFormat::NanoGpt => format!("{} at {dir}: {train} train / {val} val tokens", self.format),
            DataFormat::LlmC => format!(
                "{} at {dir}: {train} train tokens in {} shard(s) / {val} val tokens in {} shard(s)",
                self.format,
                self.train.shards().len(),
                self.val.shards().len()
            ),
        }
    }
}

/// How much of a vocabulary a dataset uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabUsage {
    /// The vocabulary size asked about.
    pub vocab_size: usize,
    /// Distinct token ids below `vocab_size` that occur in train ∪ val.
    pub present: usize,
    /// Of those, the ones that occur in train (the rest occur only in val).
    pub train_present: usize,
    /// Ids below `vocab_size` that occur in neither split: `vocab_size − present`.
    pub never_seen: usize,
}

/// Counts the distinct token ids of `dataset` (train ∪ val, every shard) below `vocab_size`, from the
/// id sets the shards made when they were opened (no further pass over the tokens).
pub fn vocab_usage(dataset: &Dataset, vocab_size: usize) -> VocabUsage {
    let mut all = split_tokens(&dataset.train);
    let train_present = all.count_below(vocab_size);
    all.union_with(&split_tokens(&dataset.val));
    let present = all.count_below(vocab_size);
    VocabUsage {
        vocab_size,
        present,
        train_present,
        never_seen: vocab_size - present,
    }
}

/// The set of token ids that occur in train ∪ val.
pub fn dataset_tokens(dataset: &Dataset) -> TokenSet {
    let mut all = split_tokens(&dataset.train);
    all.union_with(&split_tokens(&dataset.val));
    all
}

/// The set of token ids that occur in one split: the union of its shards' sets.
pub fn split_tokens(split: &TokenSplit) -> TokenSet {
    let mut all = TokenSet::new();
    for shard in split.shards() {
        all.union_with(shard.ids());
    }
    all
}

/// The ids of `tokens`: one parallel pass.
fn token_set(tokens: &[u16]) -> TokenSet {
    tokens
        .par_chunks(1 << 16)
        .fold(TokenSet::new, |mut set, chunk| {
            set.extend(chunk.iter().copied());
            set
        })
        .reduce(TokenSet::new, |mut a, b| {
            a.union_with(&b);
            a
        })
}

/// A set of uint16 token ids: a bitmap of 65,536 bits.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    bits: Box<[u64; 1024]>,
}

impl Default for TokenSet {
    fn default() -> Self {
        TokenSet::new()
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSet({} ids)", self.len())
    }
}

impl TokenSet {
    pub fn new() -> TokenSet {
        TokenSet {
            bits: Box::new([0; 1024]),
        }
    }

    pub fn insert(&mut self, t: u16) {
        self.bits[usize::from(t >> 6)] |= 1 << (t & 63);
    }

    pub fn extend(&mut self, tokens: impl IntoIterator<Item = u16>) {
        for t in tokens {
            self.insert(t);
        }
    }

    pub fn contains(&self, t: u16) -> bool {
        self.bits[usize::from(t >> 6)] >> (t & 63) & 1 == 1
    }

    pub fn union_with(&mut self, other: &TokenSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= b;
        }
    }

    /// The largest id in the set; None when it is empty.
    pub fn max(&self) -> Option<u16> {
        let (w, bits) = self.bits.iter().enumerate().rev().find(|(_, &b)| b != 0)?;
        Some((w * 64 + 63 - bits.leading_zeros() as usize) as u16)
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// Number of ids in the set below `n`.
    pub fn count_below(&self, n: usize) -> usize {
        let n = n.min(1 << 16);
        let (words, rest) = (n / 64, n % 64);
        let full: usize = self.bits[..words]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum();
        let partial = if rest == 0 {
            0
        } else {
            (self.bits[words] & ((1u64 << rest) - 1)).count_ones() as usize
        };
        full + partial
    }

    /// The ids in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u16)
                .filter(move |b| w >> b & 1 == 1)
                .map(move |b| (i as u16) << 6 | b)
        })
    }
}

/// The regular files of `dir` whose names match any of `patterns`, sorted by name. A by-hand glob: the
/// patterns only use `*`.
fn glob_dir(dir: &Path, patterns: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if patterns.iter().any(|p| wildcard_match(p, &name)) && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters (including none); every other character matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Position after the last `*` seen, and the name position it was tried against.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` absorb one more character and retry.
            pi = sp;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `1234567` → `"1,234,567"`.
pub(crate) fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Appends tokens as little-endian uint16.
pub(crate) fn write_u16_le(
    w: &mut impl Write,
    tokens: impl IntoIterator<Item = u16>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
        if buf.len() >= 1 << 16 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

/// Writes a nanoGPT flat token file (little-endian uint16, no header). It truncates and rewrites `path`
/// in place, so it must not target a file that is mapped ([`TokenShard`] # Safety); [`super::prepare()`]
/// writes to a temporary name and renames instead.
pub fn write_flat(path: &Path, tokens: &[u16]) -> Result<()> {
    let mut w = BufWriter::new(File::create(path).map_err(|e| Error::io(path, e))?);
    write_u16_le(&mut w, tokens.iter().copied()).map_err(|e| Error::io(path, e))?;
    w.flush().map_err(|e| Error::io(path, e))
}

/// Writes an llm.c token shard: header (magic 20240520, version 1, token count) then uint16 tokens. Like
/// [`write_flat`], it rewrites `path` in place.
pub fn write_llmc_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    let ntok = i32::try_from(tokens.len()).map_err(|_| {
        Error::bad_file(
            path,
            "header[2] token count",
            format!("{} tokens do not fit an int32", tokens.len()),
        )
    })?;
    let mut header = [0u8; LLMC_HEADER_BYTES];
    for (i, v) in [LLMC_MAGIC, LLMC_VERSION, ntok].into_iter().enumerate() {
        header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut w = BufWriter::new(File::create(path).map_err(|e| Error::io(path, e))?);
    w.write_all(&header).map_err(|e| Error::io(path, e))?;
    write_u16_le(&mut w, tokens.iter().copied()).map_err(|e| Error::io(path, e))?;
    w.flush().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("*_train_*.bin", "fineweb_train_000001.bin"));
        assert!(wildcard_match("*_train.bin", "tiny_shakespeare_train.bin"));
        assert!(!wildcard_match(
            "*_train_*.bin",
            "tiny_shakespeare_train.bin"
        ));
        assert!(!wildcard_match("*_val_*.bin", "fineweb_train_000001.bin"));
        assert!(!wildcard_match("*_val_*.bin", "fineweb_val_000000.bin.tmp"));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn digits() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
