//! The data path: token files (both formats) round-trip, every bad input is named, the sampler is
//! reproducible and never crosses a shard, and `prepare` matches tiktoken and the documented val split.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::tmp;
use rotadam::data::shard::LLMC_HEADER_BYTES;
use rotadam::data::{
    dataset_tokens, demo_corpus, fixed_batches, meta_vocab_size, prepare, read_meta, resolve,
    vocab_usage, write_flat, write_llmc_shard, BatchSampler, DataFormat, Dataset, PrepareOptions,
    TokenShard, TokenSplit, VocabUsage, GPT2_EOT,
};
use rotadam::rng::splitmix64;

const VOCAB: usize = 50257;
const GPT2_TEST_TEXT: &str = "Hello world, this is GPT-2.";
const GPT2_TEST_IDS: [u16; 10] = [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 13];

/// Tokens `0, 1, 2, …` offset by `base` (all below the vocab).
fn ramp(base: u16, n: usize) -> Vec<u16> {
    (0..n).map(|i| base + (i % 1000) as u16).collect()
}

/// The error's message must contain every one of the `|`-separated `needles`.
fn assert_err<T: std::fmt::Debug>(r: rotadam::Result<T>, needles: &str) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles.split('|') {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

/// The sorted file names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name());
    let mut names: Vec<String> = names.map(|n| n.to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn read_u16(path: &Path) -> Vec<u16> {
    fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

// ---- round trips -------------------------------------------------------------------------------------

#[test]
fn flat_round_trip() {
    let d = tmp("data-flat");
    let (train, val) = (ramp(0, 5000), ramp(40000, 300));
    write_flat(&d.join("train.bin"), &train).unwrap();
    write_flat(&d.join("val.bin"), &val).unwrap();
    let ds = Dataset::open(&d, VOCAB, 64).unwrap();
    assert_eq!(ds.format(), DataFormat::NanoGpt);
    assert_eq!(ds.train.shards().len(), 1);
    assert_eq!(ds.train.shards()[0].tokens(), &train[..]);
    assert_eq!(ds.val.shards()[0].tokens(), &val[..]);
    assert_eq!((ds.train.len(), ds.val.len()), (5000, 300));
    let desc = ds.describe();
    assert!(desc.starts_with("nanoGPT flat uint16 at "), "{desc}");
    assert!(desc.ends_with(": 5,000 train / 300 val tokens"), "{desc}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn llmc_round_trip_sorted_shards() {
    let d = tmp("data-llmc");
    // Written out of order; a decoy that only looks like a shard and a nanoGPT-less directory.
    let parts: Vec<Vec<u16>> = (0..3)
        .map(|k| ramp(1000 * k as u16, 100 + 37 * k))
        .collect();
    for k in [2, 0, 1] {
        write_llmc_shard(&d.join(format!("corpus_train_{k:06}.bin")), &parts[k]).unwrap();
    }
    write_llmc_shard(&d.join("corpus_val_000000.bin"), &ramp(9, 50)).unwrap();
    fs::write(d.join("corpus_train_000009.bin.tmp"), b"junk").unwrap();
    fs::write(d.join("README"), b"not a shard").unwrap();
    let ds = Dataset::open(&d, VOCAB, 16).unwrap();
    assert_eq!(ds.format(), DataFormat::LlmC);
    // Sorted by name: shard 0's tokens, then 1's, then 2's.
    let all: Vec<u16> = ds
        .train
        .shards()
        .iter()
        .flat_map(|s| s.tokens().to_vec())
        .collect();
    assert_eq!(all, parts.concat());
    assert_eq!(ds.train.len(), 100 + 137 + 174);
    assert_eq!(ds.val.shards()[0].tokens(), &ramp(9, 50)[..]);
    assert!(ds
        .describe()
        .contains("411 train tokens in 3 shard(s) / 50 val tokens in 1 shard(s)"));
    // The header is exactly 256 int32 and the file exactly 1024 + 2·N bytes.
    let bytes = fs::read(d.join("corpus_val_000000.bin")).unwrap();
    assert_eq!(bytes.len(), LLMC_HEADER_BYTES + 100);
    assert_eq!(
        &bytes[..12],
        [20240520i32, 1, 50].map(i32::to_le_bytes).concat()
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn llmc_single_file_names() {
    // llm.c's tinyshakespeare prep writes `tiny_shakespeare_train.bin` / `tiny_shakespeare_val.bin`.
    let d = tmp("data-llmc-names");
    write_llmc_shard(&d.join("tiny_shakespeare_train.bin"), &ramp(0, 40)).unwrap();
    write_llmc_shard(&d.join("tiny_shakespeare_val.bin"), &ramp(0, 20)).unwrap();
    let ds = Dataset::open(&d, VOCAB, 8).unwrap();
    assert_eq!((ds.train.len(), ds.val.len()), (40, 20));
    fs::remove_dir_all(&d).unwrap();
}

// ---- bad inputs: each names the file and the field ---------------------------------------------------

#[test]
fn missing_dir_and_missing_files() {
    let d = tmp("data-missing");
    assert_err(
        Dataset::open(&d.join("nope"), VOCAB, 8),
        "nope|data directory|does not exist",
    );
    assert_err(
        Dataset::open(&d, VOCAB, 8),
        "data-missing|data files|train.bin|*_train_*.bin",
    );
    write_flat(&d.join("train.bin"), &ramp(0, 100)).unwrap();
    assert_err(
        Dataset::open(&d, VOCAB, 8),
        "data files|train.bin without val.bin",
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn short_long_and_bad_header_shards() {
    let d = tmp("data-header");
    let good = d.join("x_train_000000.bin");
    write_llmc_shard(&good, &ramp(0, 10)).unwrap();
    let bytes = fs::read(&good).unwrap();
    let open = |p: &Path| TokenShard::open(p, DataFormat::LlmC, VOCAB);
    assert_eq!(open(&good).unwrap().tokens(), &ramp(0, 10)[..]);

    let short = d.join("short.bin");
    fs::write(&short, &bytes[..bytes.len() - 4]).unwrap();
    assert_err(
        open(&short),
        "short.bin|length|header says 10 tokens (1044 bytes) but the file has 1040 bytes",
    );
    let long = d.join("long.bin");
    fs::write(&long, [&bytes[..], &[0, 0]].concat()).unwrap();
    assert_err(open(&long), "long.bin|length|1046 bytes");
    let tiny = d.join("tiny.bin");
    fs::write(&tiny, &bytes[..100]).unwrap();
    assert_err(open(&tiny), "tiny.bin|header|1024-byte");

    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(&20240326i32.to_le_bytes());
    fs::write(d.join("magic.bin"), &magic).unwrap();
    assert_err(
        open(&d.join("magic.bin")),
        "magic.bin|header[0] magic|expected 20240520|20240326",
    );

    let mut version = bytes.clone();
    version[4..8].copy_from_slice(&7i32.to_le_bytes());
    fs::write(d.join("version.bin"), &version).unwrap();
    assert_err(
        open(&d.join("version.bin")),
        "version.bin|header[1] version|expected 1, found 7",
    );

    // Through Dataset::open too: the bad shard is named.
    fs::write(d.join("x_val_000000.bin"), &version).unwrap();
    assert_err(
        Dataset::open(&d, VOCAB, 4),
        "x_val_000000.bin|header[1] version",
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn odd_empty_and_out_of_vocab_flat_files() {
    let d = tmp("data-flatbad");
    write_flat(&d.join("train.bin"), &ramp(0, 100)).unwrap();
    fs::write(d.join("val.bin"), [1u8, 0, 2]).unwrap();
    assert_err(Dataset::open(&d, VOCAB, 4), "val.bin|length|3 bytes is odd");
    fs::write(d.join("val.bin"), []).unwrap();
    assert_err(Dataset::open(&d, VOCAB, 4), "val.bin|length|empty");
    let mut val = ramp(0, 100);
    val[7] = 50257;
    val[60] = 65535;
    write_flat(&d.join("val.bin"), &val).unwrap();
    assert_err(
        Dataset::open(&d, VOCAB, 4),
        "val.bin|token id|token 7 (byte offset 14) is 50257, not below the model's vocab size 50257|largest token id is 65535, so the model needs --vocab-size 65536",
    );
    // A larger vocab (GPT-2's padded 50304) accepts 50257 but not 65535.
    assert_err(Dataset::open(&d, 50304, 4), "val.bin|token 60|65535");
    // In an llm.c shard the byte offset counts the header; the bound is exact (EOT 50256 is fine).
    let p = d.join("s.bin");
    write_llmc_shard(&p, &[1, 50256]).unwrap();
    assert!(TokenShard::open(&p, DataFormat::LlmC, VOCAB).is_ok());
    write_llmc_shard(&p, &[1, 2, 50257]).unwrap();
    let r = TokenShard::open(&p, DataFormat::LlmC, VOCAB);
    assert_err(r, "s.bin|token 2 (byte offset 1028) is 50257");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn seq_len_too_large() {
    let d = tmp("data-seqlen");
    write_flat(&d.join("train.bin"), &ramp(0, 5000)).unwrap();
    write_flat(&d.join("val.bin"), &ramp(0, 800)).unwrap();
    assert!(Dataset::open(&d, VOCAB, 799).is_ok());
    assert_err(
        Dataset::open(&d, VOCAB, 1024),
        "val.bin|seq-len|seq-len 1024 needs at least 1025 tokens in one shard; val has 800",
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_jsonl_and_invalid_utf8() {
    let d = tmp("data-badtext");
    let run = |input: &str| {
        let opts = PrepareOptions {
            inputs: vec![d.join(input)],
            out: d.join("out"),
            quiet: true,
            ..PrepareOptions::default()
        };
        prepare(&opts)
    };
    fs::write(d.join("a.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"ok\"\n").unwrap();
    assert_err(run("a.jsonl"), "a.jsonl|line 2|not JSON");
    fs::write(
        d.join("b.jsonl"),
        "{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n",
    )
    .unwrap();
    assert_err(run("b.jsonl"), "b.jsonl|line 3|no \"text\" field");
    fs::write(d.join("c.jsonl"), "{\"text\": 3}\n").unwrap();
    assert_err(
        run("c.jsonl"),
        "c.jsonl|line 1|\"text\" field is not a string: 3",
    );
    fs::write(
        d.join("d.jsonl"),
        b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n",
    )
    .unwrap();
    assert_err(run("d.jsonl"), "d.jsonl|line 2|UTF-8");
    fs::write(d.join("e.txt"), b"fine text, then \xc3\x28 bad").unwrap();
    assert_err(
        run("e.txt"),
        "e.txt|text|not valid UTF-8 (first bad byte at offset 16)",
    );
    assert_err(run("missing.txt"), "missing.txt");
    // A failed prepare leaves nothing behind in the output directory.
    assert_eq!(listing(&d.join("out")), Vec::<String>::new());
    fs::remove_dir_all(&d).unwrap();
}

// ---- sampler ---------------------------------------------------------------------------------------------

/// Shards whose tokens encode (shard id, position): token = 10000·(k+1) + position.
fn labelled_split(d: &Path, lens: &[usize]) -> TokenSplit {
    let shards = lens
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let p = d.join(format!("l_train_{k:03}.bin"));
            let tokens: Vec<u16> = (0..n).map(|i| (10000 * (k + 1) + i) as u16).collect();
            write_llmc_shard(&p, &tokens).unwrap();
            TokenShard::open(&p, DataFormat::LlmC, 65536).unwrap()
        })
        .collect();
    TokenSplit::new("train", shards)
}

#[test]
fn sampler_is_reproducible_and_resumable() {
    let d = tmp("data-sampler");
    let split = labelled_split(&d, &[300, 50, 1000]);
    let draw = |s: &mut BatchSampler, n: usize| {
        (0..n)
            .map(|_| s.next_batch(&split, 4, 16))
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (BatchSampler::new(7), BatchSampler::new(7));
    assert_eq!(draw(&mut a, 5), draw(&mut b, 5));
    assert_ne!(
        draw(&mut BatchSampler::new(8), 5),
        draw(&mut BatchSampler::new(7), 5)
    );

    // Save mid-way (as a checkpoint would), keep going, restore, and the continuation is identical.
    let mut live = BatchSampler::new(42);
    draw(&mut live, 3);
    let saved = serde_json::to_string(&live).unwrap();
    let ahead = draw(&mut live, 6);
    let mut restored: BatchSampler = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored.batches_drawn(), 3);
    assert_eq!(draw(&mut restored, 6), ahead);
    assert_eq!((restored.batches_drawn(), live.batches_drawn()), (9, 9));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn batches_are_shifted_windows_inside_one_shard() {
    let d = tmp("data-windows");
    let (t, lens) = (3, [5usize, 7, 3]);
    let split = labelled_split(&d, &lens);
    let mut sampler = BatchSampler::new(1);
    let mut counts: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for _ in 0..1000 {
        let batch = sampler.next_batch(&split, 6, t);
        assert_eq!(
            (batch.b, batch.t, batch.inputs.len(), batch.targets.len()),
            (6, t, 6 * t, 6 * t)
        );
        for i in 0..batch.b {
            let (x, y) = batch.row(i);
            assert_eq!(x[1..], y[..t - 1], "targets are the inputs shifted by one");
            let window: Vec<u32> = x.iter().chain(&y[t - 1..]).copied().collect();
            let (shard, start) = (window[0] / 10000, window[0] % 10000);
            for (j, &tok) in window.iter().enumerate() {
                assert_eq!(
                    tok,
                    10000 * shard + start + j as u32,
                    "row crosses a shard or skips a token"
                );
            }
            assert!(
                (start as usize) + t < lens[shard as usize - 1],
                "window runs past its shard"
            );
            *counts.entry((shard, start)).or_default() += 1;
        }
    }
    // Valid starts: shard 1 → 0..=1, shard 2 → 0..=3, shard 3 (3 tokens < t+1) → none; all uniform.
    let expected: Vec<(u32, u32)> = vec![(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3)];
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    for (&k, &c) in &counts {
        assert!(
            (850..1150).contains(&c),
            "start {k:?} drawn {c} times of 6000, expected ~1000"
        );
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn fixed_batches_repeat() {
    let d = tmp("data-fixed");
    let split = labelled_split(&d, &[500, 500]);
    let a = fixed_batches(&split, 3, 32, 4, 0);
    assert_eq!(a.len(), 4);
    assert_eq!(a, fixed_batches(&split, 3, 32, 4, 0));
    assert_ne!(a, fixed_batches(&split, 3, 32, 4, 1));
    assert_ne!(a[0], a[1]);
    fs::remove_dir_all(&d).unwrap();
}

// ---- prepare -----------------------------------------------------------------------------------------

/// The documented split rule, recomputed from the sequential SplitMix64 stream.
fn split_rule(seed: u64, n: usize, vf: f64) -> Vec<bool> {
    let mut state = seed;
    let mut to_val: Vec<bool> = (0..n)
        .map(|_| ((splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64) < vf)
        .collect();
    let earlier_val = to_val[..n - 1].iter().any(|&v| v);
    let earlier_train = to_val[..n - 1].iter().any(|&v| !v);
    if !earlier_val {
        to_val[n - 1] = true;
    } else if !earlier_train {
        to_val[n - 1] = false;
    }
    to_val
}

/// `train.bin` and `val.bin` hold the documents' tokens in order, split by `rule` (true = val).
fn assert_outputs(out: &Path, encoded: &[Vec<u16>], rule: &[bool]) {
    for (name, val) in [("train.bin", false), ("val.bin", true)] {
        let docs = encoded.iter().zip(rule).filter(|(_, &v)| v == val);
        let want: Vec<u16> = docs.flat_map(|(e, _)| e.clone()).collect();
        assert_eq!(read_u16(&out.join(name)), want, "{name}");
    }
}

fn encode(text: &str) -> Vec<u16> {
    let mut ids = tiktoken_rs::r50k_base_singleton().encode_ordinary(text);
    ids.push(GPT2_EOT);
    ids.into_iter().map(|t| t as u16).collect()
}

#[test]
fn prepare_matches_tiktoken_and_the_split_rule() {
    let d = tmp("data-prepare");
    let src = d.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), GPT2_TEST_TEXT).unwrap();
    let lines = [
        "Ünïcödé — “quotes” and 日本語",
        "a literal <|endoftext|> stays ordinary text",
        "",
    ];
    let jsonl: String = lines
        .iter()
        .map(|t| serde_json::json!({ "text": t, "id": 1 }).to_string() + "\n")
        .collect();
    let jsonl = jsonl + "\n   \n";
    fs::write(src.join("b.jsonl"), &jsonl).unwrap();
    let sub_docs: Vec<String> = (0..9)
        .map(|i| format!("Document {i}: {}", "word ".repeat(i * 7)))
        .collect();
    for (i, text) in sub_docs.iter().enumerate() {
        fs::write(src.join("sub").join(format!("{i:02}.txt")), text).unwrap();
    }
    fs::write(src.join(".hidden.txt"), "skipped").unwrap();
    let text_bytes =
        GPT2_TEST_TEXT.len() + jsonl.len() + sub_docs.iter().map(String::len).sum::<usize>();
    let docs: Vec<&str> = [GPT2_TEST_TEXT]
        .into_iter()
        .chain(lines)
        .chain(sub_docs.iter().map(String::as_str))
        .collect();

    let (seed, vf) = (11, 0.3);
    let opts = PrepareOptions {
        inputs: vec![src.clone()],
        out: d.join("out"),
        val_fraction: vf,
        seed,
        compact_vocab: false,
        min_count: None,
        quiet: true,
    };
    let summary = prepare(&opts).unwrap();
    let encoded: Vec<Vec<u16>> = docs.iter().map(|t| encode(t)).collect();
    assert_eq!(encoded[0], [&GPT2_TEST_IDS[..], &[50256]].concat()); // the GPT-2 test vector
                                                                     // `<|endoftext|>` in a text is 7 ordinary tokens, not EOT; an empty document is just EOT.
    assert_eq!(encode("<|endoftext|>").len(), 7 + 1);
    assert_eq!(encoded[2].iter().filter(|&&t| t == 50256).count(), 1);
    assert_eq!(encoded[3], [50256]);

    let rule = split_rule(seed, docs.len(), vf);
    assert!(rule.iter().any(|&v| v) && rule.iter().any(|&v| !v));
    assert_outputs(&d.join("out"), &encoded, &rule);
    let n_val = rule.iter().filter(|&&v| v).count() as u64;
    assert_eq!((summary.files, summary.documents), (11, 13));
    assert_eq!(
        (summary.train_documents, summary.val_documents),
        (13 - n_val, n_val)
    );
    let out = d.join("out");
    assert_eq!(
        summary.train_tokens as usize,
        read_u16(&out.join("train.bin")).len()
    );
    assert_eq!(
        summary.bytes_read, text_bytes as u64,
        "every byte but .hidden.txt's"
    );

    // meta.json records the summary and the options; no temporary files are left.
    let meta = read_meta(&out).unwrap();
    assert_eq!(meta.tokenizer, "gpt2 (r50k_base)");
    assert_eq!(meta.summary, summary);
    assert!(meta.options.same_recipe(&opts));
    assert_eq!(listing(&out), ["meta.json", "train.bin", "val.bin"]);

    // The output opens as a dataset.
    let ds = Dataset::open(&out, VOCAB, 4).unwrap();
    assert_eq!(ds.val.len() as u64, summary.val_tokens);

    // A failing prepare into the same directory leaves the previous outputs untouched.
    let contents = || {
        listing(&out)
            .iter()
            .map(|n| fs::read(out.join(n)).unwrap())
            .collect::<Vec<_>>()
    };
    let before = contents();
    fs::write(src.join("sub").join("zz.jsonl"), "not json\n").unwrap();
    assert_err(prepare(&opts), "zz.jsonl|line 1");
    assert_eq!(listing(&out), ["meta.json", "train.bin", "val.bin"]);
    assert_eq!(contents(), before);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn prepare_streams_many_documents_in_order() {
    // 700 jsonl lines: three chunks of at most 256 documents, each tokenized in parallel.
    let d = tmp("data-many");
    let texts: Vec<String> = (0..700)
        .map(|i| format!("line {i}: {}", "la ".repeat(i % 13)))
        .collect();
    let jsonl: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    fs::write(d.join("many.jsonl"), jsonl).unwrap();
    let opts = PrepareOptions {
        inputs: vec![d.join("many.jsonl")],
        out: d.join("out"),
        val_fraction: 0.1,
        seed: 3,
        compact_vocab: false,
        min_count: None,
        quiet: true,
    };
    let summary = prepare(&opts).unwrap();
    let rule = split_rule(3, 700, 0.1);
    let n_val = rule.iter().filter(|&&v| v).count();
    assert_eq!(summary.val_documents as usize, n_val);
    assert!((45..95).contains(&summary.val_documents), "{summary:?}");
    let encoded: Vec<Vec<u16>> = texts.iter().map(|t| encode(t)).collect();
    assert_outputs(&d.join("out"), &encoded, &rule);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn split_fallbacks() {
    let d = tmp("data-fallback");
    for i in 0..3 {
        fs::write(d.join(format!("{i}.txt")), format!("document number {i}")).unwrap();
    }
    let opts = |vf: f64, inputs: Vec<PathBuf>| PrepareOptions {
        inputs,
        out: d.join("out"),
        val_fraction: vf,
        seed: 5,
        compact_vocab: false,
        min_count: None,
        quiet: true,
    };
    let three: Vec<PathBuf> = (0..3).map(|i| d.join(format!("{i}.txt"))).collect();
    // val_fraction 0: nothing hashes to val, so the last document goes there.
    let (val_bin, train_bin) = (
        || read_u16(&d.join("out/val.bin")),
        || read_u16(&d.join("out/train.bin")),
    );
    let s = prepare(&opts(0.0, three.clone())).unwrap();
    assert_eq!((s.train_documents, s.val_documents), (2, 1));
    assert_eq!(val_bin(), encode("document number 2"));
    // val_fraction just below 1: everything hashes to val, so the last document goes to train.
    let s = prepare(&opts(0.999_999, three.clone())).unwrap();
    assert_eq!((s.train_documents, s.val_documents), (1, 2));
    assert_eq!(train_bin(), encode("document number 2"));
    // One document: its last val_fraction of tokens (rounded) go to val.
    let text = "one single document with a handful of words in it, long enough to split.";
    fs::write(d.join("one.txt"), text).unwrap();
    let s = prepare(&opts(0.25, vec![d.join("one.txt")])).unwrap();
    let all = encode(text);
    let n_val = (all.len() as f64 * 0.25).round() as usize;
    assert!(s.single_document_split && n_val >= 1);
    assert_eq!(val_bin(), all[all.len() - n_val..]);
    assert_eq!(train_bin(), all[..all.len() - n_val]);
    assert_err(prepare(&opts(1.0, three)), "val-fraction|[0, 1)");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn demo_corpus_builds() {
    let dir = demo_corpus(true).unwrap();
    let ds = Dataset::open(&dir, VOCAB, 1024).unwrap();
    let meta = read_meta(&dir).unwrap();
    assert_eq!(meta.summary.documents, 35, "35 *_gut.txt plays and poems");
    let inputs = &meta.options.inputs;
    assert!(inputs
        .iter()
        .all(|p| p.to_string_lossy().ends_with("_gut.txt")));
    let (train, val) = (ds.train.len(), ds.val.len());
    assert_eq!(
        (train as u64, val as u64),
        (meta.summary.train_tokens, meta.summary.val_tokens)
    );
    // data/README.md: 1,182,372 train / 109,186 val tokens, 3 of 35 documents in val (seed 0, fraction 0.1).
    assert_eq!(
        (meta.summary.train_documents, meta.summary.val_documents),
        (32, 3)
    );
    assert!(train > 1_100_000, "train has {train} tokens");
    assert!(val > 100_000, "val has {val} tokens");
    assert!(
        (1_250_000..1_350_000).contains(&(train + val)),
        "{train} + {val} tokens"
    );
    // 35 EOTs, one per document, and nothing out of vocabulary.
    let eots = ds.train.shards()[0]
        .tokens()
        .iter()
        .chain(ds.val.shards()[0].tokens())
        .filter(|&&t| t == 50256);
    assert_eq!(eots.count(), 35);
    // A second call finds it prepared and leaves it alone.
    let mtime = || {
        fs::metadata(dir.join("train.bin"))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before = mtime();
    assert_eq!(demo_corpus(true).unwrap(), dir);
    assert_eq!(mtime(), before);
}

/// Runs the `rotadam` binary with `args`; returns (status success, stdout, stderr).
fn rotadam_bin(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotadam"))
        .args(args)
        .output()
        .expect("run the rotadam binary");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn prepare_quiet_prints_only_the_summary() {
    // `--quiet`: nothing on stderr; stdout is the JSON summary alone. Without it the progress lines go
    // to stderr (which is what makes the quiet check meaningful).
    let d = tmp("data-quiet");
    fs::write(d.join("a.txt"), "First document, with a few words.").unwrap();
    fs::write(
        d.join("b.jsonl"),
        "{\"text\": \"second\"}\n\n{\"text\": \"third\"}\n",
    )
    .unwrap();
    let run = |out: &str, quiet: bool| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "prepare".into(),
            "--input".into(),
            d.join("a.txt").into(),
            d.join("b.jsonl").into(),
            "--out".into(),
            d.join(out).into(),
        ];
        if quiet {
            args.push("--quiet".into());
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        rotadam_bin(&refs)
    };
    let (ok, stdout, stderr) = run("quiet", true);
    assert!(ok, "prepare --quiet failed: {stderr}");
    assert_eq!(stderr, "", "prepare --quiet wrote to stderr");
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is the JSON summary");
    assert_eq!(summary["documents"], 3, "{stdout}");

    let (ok, loud_stdout, loud_stderr) = run("loud", false);
    assert!(ok, "{loud_stderr}");
    assert!(
        loud_stderr.contains("prepare:"),
        "no progress: {loud_stderr:?}"
    );
    let loud: serde_json::Value = serde_json::from_str(&loud_stdout).unwrap();
    assert_eq!(loud["train_tokens"], summary["train_tokens"]);
    fs::remove_dir_all(&d).unwrap();
}

// ---- compact vocabulary ------------------------------------------------------------------------------

/// Three documents, the last in val (val fraction 0: the fallback), each with words the others lack.
fn compact_corpus(d: &Path) -> PrepareOptions {
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("0.txt"), "The quick brown fox, a fox of foxes.").unwrap();
    fs::write(
        src.join("1.jsonl"),
        "{\"text\": \"jumps over the lazy dog\"}\n{\"text\": \"Ünïcödé 日本語\"}\n",
    )
    .unwrap();
    fs::write(src.join("2.txt"), "Quixotic xylophone zeugma, only in val.").unwrap();
    PrepareOptions {
        inputs: vec![src],
        out: d.join("plain"),
        val_fraction: 0.0,
        seed: 0,
        compact_vocab: false,
        min_count: None,
        quiet: true,
    }
}

#[test]
fn compact_vocab_preserves_the_sequence_under_the_mapping() {
    let d = tmp("data-compact");
    let plain_opts = compact_corpus(&d);
    let compact_opts = PrepareOptions {
        out: d.join("compact"),
        compact_vocab: true,
        ..plain_opts.clone()
    };
    let plain_summary = prepare(&plain_opts).unwrap();
    let summary = prepare(&compact_opts).unwrap();
    let (plain, compact) = (d.join("plain"), d.join("compact"));
    let bins = |dir: &Path| {
        (
            read_u16(&dir.join("train.bin")),
            read_u16(&dir.join("val.bin")),
        )
    };
    let (plain_train, plain_val) = bins(&plain);
    let (train, val) = bins(&compact);
    // The corpus has ids only val holds (so a compaction that looks at train alone loses them).
    assert!(plain_val.iter().any(|t| !plain_train.contains(t)));

    let meta = read_meta(&compact).unwrap();
    let ids: Vec<u32> = meta.gpt2_ids.clone().expect("gpt2_ids in meta.json");
    let distinct: std::collections::BTreeSet<u16> =
        plain_train.iter().chain(&plain_val).copied().collect();
    let k = distinct.len();
    // K is the number of distinct ids, and the mapping is exactly those ids in increasing order.
    assert_eq!(ids.len(), k);
    assert_eq!((meta.vocab_size, summary.vocab_size), (Some(k), Some(k)));
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not sorted: {ids:?}");
    assert_eq!(
        ids,
        distinct.iter().map(|&t| u32::from(t)).collect::<Vec<_>>()
    );
    // The sequence is preserved: mapping the new ids back gives the GPT-2 ids, in both splits.
    let back =
        |toks: &[u16]| -> Vec<u16> { toks.iter().map(|&t| ids[t as usize] as u16).collect() };
    assert_eq!(back(&train), plain_train, "train");
    assert_eq!(back(&val), plain_val, "val");
    // Dense: every id 0..K occurs, none at or above K.
    let used: std::collections::BTreeSet<u16> = train.iter().chain(&val).copied().collect();
    assert_eq!(used, (0..k as u16).collect());
    // EOT is the largest GPT-2 id, so its new id is K − 1, and meta.json's eot is the new id.
    assert_eq!(meta.eot as usize, k - 1);
    assert_eq!(meta.to_gpt2(meta.eot), Some(GPT2_EOT));
    assert_eq!(meta.to_gpt2(k as u32), None);
    // Everything else is what the plain preparation did; no temporary file is left.
    let same = rotadam::data::PrepareSummary {
        seconds: summary.seconds,
        vocab_size: None,
        ..summary.clone()
    };
    assert_eq!((summary.unk_train_tokens, meta.unk), (None, None));
    assert_eq!(
        same,
        rotadam::data::PrepareSummary {
            seconds: summary.seconds,
            ..plain_summary
        }
    );
    assert!(meta.options.compact_vocab && meta.options.same_recipe(&compact_opts));
    assert!(!meta.options.same_recipe(&PrepareOptions {
        compact_vocab: false,
        ..compact_opts.clone()
    }));
    assert_eq!(listing(&compact), ["meta.json", "train.bin", "val.bin"]);
    // The mapping is one line of meta.json, after everything else.
    let text = fs::read_to_string(compact.join("meta.json")).unwrap();
    let last = text.lines().rev().nth(1).unwrap();
    assert!(
        last.starts_with("  \"gpt2_ids\": [") && last.ends_with(']'),
        "{last}"
    );

    // The plain meta.json says nothing about compaction (the default output is unchanged).
    let plain_text = fs::read_to_string(plain.join("meta.json")).unwrap();
    for key in ["compact_vocab", "vocab_size", "gpt2_ids"] {
        assert!(!plain_text.contains(key), "{key} in {plain_text}");
    }
    let plain_meta = read_meta(&plain).unwrap();
    assert_eq!(
        (plain_meta.eot, plain_meta.compact_vocab()),
        (GPT2_EOT, None)
    );
    assert_eq!(plain_meta.to_gpt2(123), Some(123));

    // Opening: K is exposed, and a model vocabulary below K is refused by name.
    let ds = Dataset::open(&compact, k, 4).unwrap();
    assert_eq!(ds.meta_vocab(), Some(k));
    assert_eq!(ds.gpt2_ids(), Some(&ids[..]));
    assert_eq!(meta_vocab_size(&compact).unwrap(), Some(k));
    assert_err(
        Dataset::open(&compact, k - 1, 4),
        &format!("meta.json|vocab_size|compacted to {k} ids|--vocab-size {k} or more"),
    );
    let ds = Dataset::open(&plain, VOCAB, 4).unwrap();
    assert_eq!((ds.meta_vocab(), ds.gpt2_ids()), (None, None));
    assert_eq!(meta_vocab_size(&plain).unwrap(), None);
    fs::remove_dir_all(&d).unwrap();
}

/// A closed vocabulary (`min_count`): the ids occurring at least N times in train keep their order, every
/// other token (val-only ones included) becomes the last id, `unk`, counted in the summary; mapping the
/// kept ids back gives the GPT-2 sequence, and a `meta.json` whose `unk` disagrees is refused by name.
/// Checked planting a count over train ∪ val and an `unk` that is not the last id: both fail.
#[test]
fn closed_vocab_keeps_frequent_train_tokens_and_one_unknown() {
    let d = tmp("data-closed");
    let plain_opts = compact_corpus(&d);
    let n = 2;
    let closed_opts = PrepareOptions {
        out: d.join("closed"),
        compact_vocab: true,
        min_count: Some(n),
        ..plain_opts.clone()
    };
    prepare(&plain_opts).unwrap();
    let summary = prepare(&closed_opts).unwrap();
    let (plain, closed) = (d.join("plain"), d.join("closed"));
    let (plain_train, plain_val) = (
        read_u16(&plain.join("train.bin")),
        read_u16(&plain.join("val.bin")),
    );
    let (train, val) = (
        read_u16(&closed.join("train.bin")),
        read_u16(&closed.join("val.bin")),
    );
    let mut count = BTreeMap::<u16, u64>::new();
    for &t in &plain_train {
        *count.entry(t).or_default() += 1;
    }
    let kept: Vec<u32> = count
        .iter()
        .filter(|(&t, &c)| c >= n || u32::from(t) == GPT2_EOT)
        .map(|(&t, _)| u32::from(t))
        .collect();
    // the corpus has train tokens below the threshold and tokens only val holds
    assert!(count.values().any(|&c| c < n));
    assert!(plain_val.iter().any(|t| !count.contains_key(t)));
    let meta = read_meta(&closed).unwrap();
    let k = kept.len() + 1;
    assert_eq!(meta.gpt2_ids.as_deref(), Some(&kept[..]));
    assert_eq!((meta.vocab_size, meta.unk), (Some(k), Some(k as u32 - 1)));
    assert_eq!(meta.to_gpt2(k as u32 - 1), None, "unk has no GPT-2 id");
    let unk = (k - 1) as u16;
    let expect = |toks: &[u16]| -> Vec<u16> {
        toks.iter()
            .map(|&t| match kept.binary_search(&u32::from(t)) {
                Ok(i) => i as u16,
                Err(_) => unk,
            })
            .collect()
    };
    assert_eq!(train, expect(&plain_train), "train");
    assert_eq!(val, expect(&plain_val), "val");
    let unk_in = |toks: &[u16]| toks.iter().filter(|&&t| t == unk).count() as u64;
    assert_eq!(
        (summary.unk_train_tokens, summary.unk_val_tokens),
        (Some(unk_in(&train)), Some(unk_in(&val)))
    );
    assert!(unk_in(&train) > 0 && unk_in(&val) > 0);
    let ds = Dataset::open(&closed, k, 4).unwrap();
    assert_eq!((ds.meta_vocab(), ds.gpt2_ids()), (Some(k), Some(&kept[..])));
    assert_err(
        Dataset::open(&closed, k - 1, 4),
        &format!("meta.json|vocab_size|compacted to {k} ids"),
    );
    assert!(!meta.options.same_recipe(&PrepareOptions {
        min_count: Some(3),
        ..closed_opts.clone()
    }));

    // meta.json's closed-vocabulary fields must agree with each other
    let text = fs::read_to_string(closed.join("meta.json")).unwrap();
    let bad_unk = text.replace(
        &format!("\"unk\": {}", k - 1),
        &format!("\"unk\": {}", k - 2),
    );
    assert_ne!(bad_unk, text);
    fs::write(closed.join("meta.json"), bad_unk).unwrap();
    assert_err(read_meta(&closed), "meta.json|unk|expected the last id");
    let no_unk = text.replace(&format!(",\n  \"unk\": {}", k - 1), "");
    assert_ne!(no_unk, text);
    fs::write(closed.join("meta.json"), no_unk).unwrap();
    assert_err(read_meta(&closed), "meta.json|vocab_size|gpt2_ids has");

    // --min-count needs --compact-vocab and is at least 1
    for (opts, needle) in [
        (
            PrepareOptions {
                compact_vocab: false,
                out: d.join("x"),
                ..closed_opts.clone()
            },
            "min-count|needs --compact-vocab",
        ),
        (
            PrepareOptions {
                min_count: Some(0),
                out: d.join("y"),
                ..closed_opts.clone()
            },
            "min-count|at least 1",
        ),
    ] {
        assert_err(prepare(&opts), needle);
    }
    fs::remove_dir_all(&d).unwrap();
}

/// A `meta.json` as `prepare` wrote it before compact vocabularies existed.
const OLD_META: &str = r#"{
  "prepare_version": 1,
  "tokenizer": "gpt2 (r50k_base)",
  "eot": 50256,
  "format": "nanoGPT flat little-endian uint16",
  "options": {
    "inputs": [
      "/somewhere/data/shakespeare/alls_well_that_ends_well_gut.txt"
    ],
    "out": "/somewhere/data/cache/shakespeare",
    "val_fraction": 0.1,
    "seed": 0
  },
  "summary": {
    "files": 1,
    "documents": 1,
    "train_documents": 1,
    "val_documents": 1,
    "train_tokens": 900,
    "val_tokens": 100,
    "bytes_read": 4000,
    "seconds": 0.287869063,
    "single_document_split": true
  }
}"#;

#[test]
fn old_meta_json_still_parses() {
    let d = tmp("data-old-meta");
    fs::write(d.join("meta.json"), OLD_META).unwrap();
    let meta = read_meta(&d).unwrap();
    assert!(!meta.options.compact_vocab);
    assert_eq!((meta.vocab_size, meta.compact_vocab()), (None, None));
    assert_eq!(meta.summary.vocab_size, None);
    assert_eq!(meta.summary.train_tokens, 900);
    // It describes the recipe it always did: equal to today's options with compact_vocab off.
    let today = PrepareOptions {
        inputs: vec!["/somewhere/data/shakespeare/alls_well_that_ends_well_gut.txt".into()],
        out: "/somewhere/data/cache/shakespeare".into(),
        ..PrepareOptions::default()
    };
    assert!(meta.options.same_recipe(&today));
    // A dataset beside it opens as GPT-2 ids.
    write_flat(&d.join("train.bin"), &ramp(0, 64)).unwrap();
    write_flat(&d.join("val.bin"), &ramp(50000, 64)).unwrap();
    let ds = Dataset::open(&d, VOCAB, 8).unwrap();
    assert_eq!(ds.meta_vocab(), None);

    // Another tool's meta.json (no prepare_version) is not ours: ignored.
    fs::write(d.join("meta.json"), r#"{"vocab_size": 3, "itos": ["a"]}"#).unwrap();
    assert_eq!(Dataset::open(&d, VOCAB, 8).unwrap().meta_vocab(), None);
    // Ours with inconsistent compact fields is an error naming the field.
    let with = |extra: &str| {
        let text = OLD_META.trim_end().trim_end_matches('}').to_string() + extra + "}";
        fs::write(d.join("meta.json"), text).unwrap();
    };
    with(r#", "vocab_size": 3, "gpt2_ids": [5, 9, 7]"#);
    assert_err(
        read_meta(&d),
        "meta.json|gpt2_ids|not strictly increasing|entry 1 is 9",
    );
    assert_err(
        Dataset::open(&d, VOCAB, 8),
        "gpt2_ids|not strictly increasing",
    );
    with(r#", "vocab_size": 4, "gpt2_ids": [5, 7, 9]"#);
    assert_err(read_meta(&d), "vocab_size|is 4 but gpt2_ids has 3 entries");
    with(r#", "gpt2_ids": [5, 7, 50257]"#);
    assert_err(read_meta(&d), "vocab_size|missing");
    with(r#", "vocab_size": 3, "gpt2_ids": [5, 7, 50257]"#);
    assert_err(read_meta(&d), "gpt2_ids|50257|not a GPT-2 id");
    with(r#", "vocab_size": 3, "gpt2_ids": [5, 7, 50256]"#);
    assert_eq!(read_meta(&d).unwrap().to_gpt2(2), Some(50256));
    assert_eq!(meta_vocab_size(&d).unwrap(), Some(3));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn prepare_compact_vocab_through_the_cli() {
    let d = tmp("data-compact-cli");
    let opts = compact_corpus(&d);
    let out = d.join("out");
    let args: Vec<std::ffi::OsString> = vec![
        "prepare".into(),
        "--input".into(),
        opts.inputs[0].clone().into(),
        "--out".into(),
        out.clone().into(),
        "--val-fraction".into(),
        "0".into(),
        "--compact-vocab".into(),
        "--quiet".into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, stdout, stderr) = rotadam_bin(&refs);
    assert!(ok, "prepare --compact-vocab failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let meta = read_meta(&out).unwrap();
    assert!(meta.options.compact_vocab);
    let ids = meta.compact_vocab().expect("the mapping in meta.json");
    assert_eq!(summary["vocab_size"], ids.len());
    assert_eq!(meta.vocab_size, Some(ids.len()));
    // The same as the library call.
    prepare(&opts).unwrap();
    let plain = read_u16(&d.join("plain/train.bin"));
    let compact = read_u16(&out.join("train.bin"));
    let back: Vec<u16> = compact.iter().map(|&t| ids[t as usize] as u16).collect();
    assert_eq!(back, plain);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn vocab_usage_counts_distinct_ids() {
    let d = tmp("data-usage");
    // Ids on the edges of the bitmap's words (63, 64) and its ends (0, 65535), spread over more than one
    // parallel chunk; 77 and 50256 only in val.
    let pattern = [0u16, 1, 63, 64, 1000, 65535, 1, 1, 64];
    let train: Vec<u16> = pattern.iter().copied().cycle().take(200_000).collect();
    let val = [77u16, 0, 50256, 77, 1];
    write_flat(&d.join("train.bin"), &train).unwrap();
    write_flat(&d.join("val.bin"), &val).unwrap();
    let ds = Dataset::open(&d, 65536, 4).unwrap();
    let want = [0u16, 1, 63, 64, 77, 1000, 50256, 65535];
    assert_eq!(dataset_tokens(&ds).iter().collect::<Vec<_>>(), want);
    assert_eq!(
        vocab_usage(&ds, 65536),
        VocabUsage {
            vocab_size: 65536,
            present: 8,
            train_present: 6,
            never_seen: 65536 - 8
        }
    );
    // Only ids below the vocabulary asked about count: 65535 is not below 50257, 64 not below 64.
    assert_eq!(vocab_usage(&ds, 50257).present, 7);
    assert_eq!(vocab_usage(&ds, 64).present, 3);
    assert_eq!(vocab_usage(&ds, 65).present, 4);

    // llm.c shards: every shard of each split counts (2 only in the last train shard, 3 only in val).
    let l = d.join("llmc");
    fs::create_dir_all(&l).unwrap();
    write_llmc_shard(&l.join("c_train_000000.bin"), &[0, 1, 0, 1, 0]).unwrap();
    write_llmc_shard(&l.join("c_train_000001.bin"), &[1, 2, 1, 2, 1]).unwrap();
    write_llmc_shard(&l.join("c_val_000000.bin"), &[3, 0, 3, 0, 3]).unwrap();
    let ds = Dataset::open(&l, 10, 2).unwrap();
    let usage = vocab_usage(&ds, 10);
    assert_eq!(
        (usage.present, usage.train_present, usage.never_seen),
        (4, 3, 6)
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn demo_compact_is_the_demo_corpus_renumbered() {
    let dir = resolve("demo-compact", true).unwrap();
    assert!(dir.ends_with("data/cache/shakespeare-compact"), "{dir:?}");
    let plain_dir = resolve("demo", true).unwrap();
    assert_eq!(plain_dir, demo_corpus(true).unwrap());
    let meta = read_meta(&dir).unwrap();
    let k = meta.vocab_size.expect("compacted");
    let plain = Dataset::open(&plain_dir, VOCAB, 128).unwrap();
    let usage = vocab_usage(&plain, VOCAB);
    // data/README.md: 18,559 of GPT-2's 50,257 ids occur in the demo corpus, 18,199 of them in train.
    assert_eq!(
        (k, usage.present, usage.train_present),
        (18_559, 18_559, 18_199)
    );
    assert_eq!(usage.never_seen, VOCAB - 18_559);
    let compact = Dataset::open(&dir, k, 128).unwrap();
    assert_eq!(compact.meta_vocab(), Some(k));
    assert_eq!(vocab_usage(&compact, k).never_seen, 0);
    let ids = compact.gpt2_ids().unwrap();
    for (c, p) in [(&compact.train, &plain.train), (&compact.val, &plain.val)] {
        let (c, p) = (c.shards()[0].tokens(), p.shards()[0].tokens());
        assert_eq!(c.len(), p.len());
        assert!(c
            .iter()
            .zip(p)
            .all(|(&c, &p)| ids[c as usize] == u32::from(p)));
    }
    // A second call finds it prepared.
    let mtime = || {
        fs::metadata(dir.join("train.bin"))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before = mtime();
    assert_eq!(resolve("demo-compact", true).unwrap(), dir);
    assert_eq!(mtime(), before);
}

/// The `experiment` preset's vocabulary is `demo-closed`'s (so its model fits its data without a
/// `+vocab` suffix), its embeddings are GPT-2 124M's share of the parameters within 2 points, and a new run
/// of it reads `demo-closed`. Checked planting a vocabulary of 4285: fails.
#[test]
fn experiment_preset_matches_demo_closed() {
    use rotadam::config::ModelConfig;
    use rotadam::model::ParamTable;
    let share = |m: &ModelConfig| {
        let t = ParamTable::new(m);
        ((m.vocab_size + m.seq_len) * m.n_embd) as f64 / t.total as f64
    };
    let m = ModelConfig::preset("experiment").unwrap();
    let dir = resolve(rotadam::data::DEMO_CLOSED, true).unwrap();
    assert_eq!(meta_vocab_size(&dir).unwrap(), Some(m.vocab_size));
    let (exp, gpt2) = (share(&m), share(&ModelConfig::preset("124m").unwrap()));
    assert!((exp - gpt2).abs() < 0.02, "{exp} vs {gpt2}");
    let (cfg, _) = rotadam::run::options::RunOptions {
        model: Some("experiment".into()),
        out: Some(tmp("experiment-preset").join("run")),
        quiet: true,
        ..Default::default()
    }
    .to_config()
    .unwrap();
    assert_eq!(
        (cfg.data.as_str(), cfg.model_preset.as_str()),
        (rotadam::data::DEMO_CLOSED, "experiment")
    );
}
