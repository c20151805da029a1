//! What a sweep reports: loss curves aggregated over seeds, final losses, and the slowdown of each variant
//! against the baseline (the unrotated run).
//!
//! **Slowdown** (the definition printed in every report): let L* be the loss the baseline reaches at the end
//! of its run (mean over seeds) and T_base the first step at which the baseline's mean curve reaches L*
//! (linear interpolation between logged points; T_base is the final step unless the curve dipped below L*
//! earlier). For a variant, T is the first step at which its mean curve reaches L*, and the slowdown is
//! 100·(T − T_base)/T_base %: the extra steps, in percent, the variant needs to match the baseline. A negative
//! value is a speed-up. A variant that never reaches L* within its run gets a lower bound
//! 100·(T_end − T_base)/T_base %, written "> X%". The curve is the validation loss (fixed batches, the same
//! for every run) when at least two evaluations were logged, else the training loss smoothed by a
//! bias-corrected EMA ([`TRAIN_EMA`]), which the report names.

pub use crate::plot::mean_std;
use crate::run::metrics::StepMetrics;

/// Smoothing of the training loss where it stands in for the validation loss (and in the train figure):
/// bias-corrected exponential moving average with this decay.
pub const TRAIN_EMA: f64 = 0.9;

/// A loss curve: (step, loss) points in increasing step order.
pub type Curve = Vec<(f64, f64)>;

/// Curves of one run, read from its metrics rows.
#[derive(Clone, Debug, Default)]
pub struct RunCurves {
    pub train: Curve,
    pub val: Curve,
    /// (step, mean update CV over the 2-D weights) at the steps `--log-update-cv` logged.
    pub update_cv: Curve,
}

impl RunCurves {
    pub fn from_metrics(rows: &[StepMetrics]) -> Self {
        RunCurves {
            train: rows.iter().map(|r| (r.step as f64, r.train_loss)).collect(),
            val: rows
                .iter()
                .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v)))
                .collect(),
            update_cv: rows
                .iter()
                .filter_map(|r| r.update_cv.as_ref().map(|u| (r.step as f64, u.mean)))
                .collect(),
        }
    }

    /// The curve a report draws and measures: the val curve, or the EMA-smoothed train curve.
    pub fn curve(&self, val: bool) -> Curve {
        if val {
            self.val.clone()
        } else {
            ema(&self.train, TRAIN_EMA)
        }
    }
}

/// The mean over runs at each step of their curves ([`RunCurves::curve`]).
pub fn mean_curve(runs: &[RunCurves], val: bool) -> Curve {
    let cs: Vec<Curve> = runs.iter().map(|c| c.curve(val)).collect();
    crate::plot::aggregate(&cs)
        .iter()
        .map(|s| (s.x, s.mean))
        .collect()
}

/// Bias-corrected EMA of the values of a curve: s_t = β s_{t−1} + (1−β) x_t, reported as s_t / (1 − β^t).
pub fn ema(curve: &[(f64, f64)], beta: f64) -> Curve {
    let mut s = 0.0;
    let mut w = 1.0;
    curve
        .iter()
        .map(|&(x, y)| {
            s = beta * s + (1.0 - beta) * y;
            w *= beta;
            (x, s / (1.0 - w))
        })
        .collect()
}

/// The first step at which `curve` reaches `target` (loss ≤ target), interpolating linearly between
/// points; None if it never does.
pub fn steps_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 <= target {
        return Some(first.0);
    }
    curve.windows(2).find_map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        (y1 <= target).then(|| x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    })
}

/// A variant's slowdown against the baseline (module docs for the definition).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slowdown {
    /// Extra steps in percent (negative: faster).
    Reached(f64),
    /// Never reached the baseline's final loss: the slowdown is more than this many percent.
    NotReached(f64),
}

impl std::fmt::Display for Slowdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slowdown::Reached(p) => write!(f, "{p:+.1}%"),
            // a bound that rounds to nothing says nothing: the variant never got there
            Slowdown::NotReached(p) if *p < 0.05 => write!(f, "not reached"),
            Slowdown::NotReached(p) => write!(f, "> {p:+.1}% (not reached)"),
        }
    }
}

/// Slowdown of `curve` against `base` (both mean curves). None when the baseline is empty.
pub fn slowdown(base: &[(f64, f64)], curve: &[(f64, f64)]) -> Option<Slowdown> {
    let target = base.last()?.1;
    let t_base = steps_to_reach(base, target)?;
    if t_base <= 0.0 {
        return None;
    }
    Some(match steps_to_reach(curve, target) {
        Some(t) => Slowdown::Reached(100.0 * (t - t_base) / t_base),
        None => {
            let end = curve.last().map_or(0.0, |p| p.0);
            Slowdown::NotReached(100.0 * (end - t_base) / t_base)
        }
    })
}

/// The steps the baseline needs to reach the loss `curve` ends at, and the steps `curve` took (its last
/// point): the comparison that still speaks when a variant never reaches the baseline's final loss (the
/// baseline reaching the variant's final loss after half the steps means the variant needs about twice
/// the steps). None when the baseline never gets that low (the variant is better: see the slowdown).
pub fn baseline_steps_to_final(base: &[(f64, f64)], curve: &[(f64, f64)]) -> Option<(f64, f64)> {
    let &(end, target) = curve.last()?;
    Some((steps_to_reach(base, target)?, end))
}

/// The final training loss of a run: the mean over its last max(1, steps/20) logged steps (one step's loss
/// is one minibatch, too noisy to compare runs by).
pub fn final_train_loss(train: &[(f64, f64)]) -> f64 {
    let k = (train.len() / 20).max(1).min(train.len());
    let tail = &train[train.len() - k..];
    tail.iter().map(|p| p.1).sum::<f64>() / k as f64
}

/// Ranks of `x` (1-based), ties sharing the mean of their ranks.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation ρ of paired samples: Pearson's correlation of their ranks (ties get mean
/// ranks). None with fewer than 3 pairs or when one side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "spearman: paired samples");
    if x.len() < 3 {
        return None;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The smallest |ρ| significant at the 5% level (two-sided) for n pairs without ties: the exact values of
/// the null distribution for 5 ≤ n ≤ 10 (Zar 1972, "Significance testing of the Spearman rank correlation
/// coefficient", JASA 67: 1.000, 0.886, 0.786, 0.738, 0.700, 0.648), above that the t approximation
/// t = ρ·√((n − 2)/(1 − ρ²)) with Student's t quantile for n − 2 degrees of freedom (table up to 30,
/// then 1.96 + 2.4/df, within 0.002 of the quantile at 40, 60 and 120). None below 5 pairs, where no
/// ρ is significant.
pub fn spearman_critical(n: usize) -> Option<f64> {
    const EXACT: [f64; 6] = [1.000, 0.886, 0.786, 0.738, 0.700, 0.648];
    const T975: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match n {
        0..=4 => None,
        5..=10 => Some(EXACT[n - 5]),
        _ => {
            let df = n - 2;
            let t = T975.get(df - 1).copied().unwrap_or(1.96 + 2.4 / df as f64);
            Some(t / (df as f64 + t * t).sqrt())
        }
    }
}
