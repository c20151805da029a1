//! Batches of (input, target) token windows, drawn nanoGPT style: each row starts at a uniformly random
//! position, independently of the other rows and of earlier batches (`get_batch` in nanoGPT's `train.py`).
//!
//! A start `s` in shard `k` is valid when `s + t + 1 <= len_k`: the row reads `t` inputs `tokens[s..s+t]` and
//! `t` targets `tokens[s+1..s+t+1]` (the inputs shifted by one), all inside one shard. The valid starts of
//! all shards are concatenated and one is drawn uniformly, so a row never crosses a shard boundary and every
//! window of the split is equally likely.
//!
//! The sampler's whole state is an [`Rng`] and a counter; it is `Serialize` so a checkpoint saves it and a
//! resumed run draws the very batches the uninterrupted run would have drawn.

use serde::{Deserialize, Serialize};

use super::shard::TokenSplit;
use crate::rng::{Rng, STREAM_DATA, STREAM_EVAL};

/// The seed to give [`fixed_batches`] so that every run, whatever its training seed, is evaluated on the
/// same val windows.
pub const EVAL_SEED: u64 = 0;

/// `b` rows of `t` tokens, row-major: row `i` is `inputs[i*t..(i+1)*t]`, and `targets` is the same window
/// shifted one token to the right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub b: usize,
    pub t: usize,
}

impl Batch {
    /// Row `i`: (inputs, targets).
    pub fn row(&self, i: usize) -> (&[u32], &[u32]) {
        let r = i * self.t..(i + 1) * self.t;
        (&self.inputs[r.clone()], &self.targets[r])
    }
}

/// Draws random batches; saved in checkpoints and restored on resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSampler {
    rng: Rng,
    batches_drawn: u64,
}

impl BatchSampler {
    /// A sampler on the data stream of `seed` (`Rng::derive(seed, STREAM_DATA)`), independent of a model
    /// initialised from the same seed.
    pub fn new(seed: u64) -> BatchSampler {
        BatchSampler {
            rng: Rng::derive(seed, STREAM_DATA),
            batches_drawn: 0,
        }
    }

    /// How many batches this sampler has drawn since it was created (kept across save and restore).
    pub fn batches_drawn(&self) -> u64 {
        self.batches_drawn
    }

    /// The next batch of `b` rows of `t` tokens from `split`.
    ///
    /// # Panics
    /// If `b` or `t` is 0, or no shard of `split` holds `t + 1` tokens ([`super::Dataset::open`] checks the
    /// latter for its `seq_len`, with a message naming the file).
    pub fn next_batch(&mut self, split: &TokenSplit, b: usize, t: usize) -> Batch {
        assert!(
            b > 0 && t > 0,
            "next_batch: b = {b} and t = {t} must both be positive"
        );
        // cumulative[k] = valid starts in shards 0..=k.
        let cumulative: Vec<u64> = split
            .shards()
            .iter()
            .scan(0u64, |acc, s| {
                *acc += s.len().saturating_sub(t) as u64;
                Some(*acc)
            })
            .collect();
        let total = cumulative.last().copied().unwrap_or(0);
        assert!(
            total > 0,
            "next_batch: no shard of the {} split holds t + 1 = {} tokens (longest: {})",
            split.name(),
            t + 1,
            split.longest_shard()
        );
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            let r = self.rng.below(total);
            // The first shard whose cumulative count exceeds r holds start r.
            let k = cumulative.partition_point(|&c| c <= r);
            let before = if k == 0 { 0 } else { cumulative[k - 1] };
            let s = (r - before) as usize;
            let window = &split.shards()[k].tokens()[s..s + t + 1];
            inputs.extend(window[..t].iter().map(|&x| u32::from(x)));
            targets.extend(window[1..].iter().map(|&x| u32::from(x)));
        }
        self.batches_drawn += 1;
        Batch {
            inputs,
            targets,
            b,
            t,
        }
    }
}

/// `count` batches for evaluation, the same every time it is called with the same arguments.
///
/// Evaluating on fixed windows (rather than fresh random ones at each eval, as nanoGPT does) takes the
/// sampling noise out of the val curve: differences between two evals of one run, or between runs with
/// different rotations or training seeds evaluated with the same `seed` (use [`EVAL_SEED`]), come from the
/// model alone, so the curves are smooth and comparable.
pub fn fixed_batches(
    split: &TokenSplit,
    b: usize,
    t: usize,
    count: usize,
    seed: u64,
) -> Vec<Batch> {
    let mut sampler = BatchSampler {
        rng: Rng::derive(seed, STREAM_EVAL),
        batches_drawn: 0,
    };
    (0..count)
        .map(|_| sampler.next_batch(split, b, t))
        .collect()
}
