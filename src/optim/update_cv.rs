//! Update semi-orthogonality (Maes et al., NeurIPS 2025 poster): for each 2-D weight, the coefficient of
//! variation of the singular values σ₁ … σ_r (r = min(rows, cols)) of Adam's update direction
//! U = Rᵀ(m̂/(√v̂+ε)) (`Optimizer::direction`) restricted to that weight:
//!
//!   CV = std(σ) / mean(σ),  std the population standard deviation (1/r).
//!
//! CV = 0 exactly when all singular values are equal, i.e. the update is a multiple of a semi-orthogonal
//! matrix. Singular values come from faer's SVD in f64 (`Mat::singular_values`, as `rotation::svd` uses).
//! Embeddings are included as stored ((vocab, C) and (T, C)); the singular values do not depend on the
//! orientation. A zero update (mean 0) has CV NaN (written as `null` in JSON).

use crate::error::{Error, Result};
use crate::model::ParamTable;
use serde::{Deserialize, Serialize};

/// std(σ)/mean(σ) of the singular values of the `rows`×`cols` row-major matrix `a`.
pub fn singular_value_cv(a: &[f64], rows: usize, cols: usize) -> Result<f64> {
    assert_eq!(a.len(), rows * cols, "singular_value_cv: shape");
    let m = faer::Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j]);
    let s = m
        .singular_values()
        .map_err(|e| Error::config("update-cv", format!("SVD did not converge: {e:?}")))?;
    Ok(cv(&s))
}

/// std/mean of `s` (population std); NaN when the mean is 0.
pub fn cv(s: &[f64]) -> f64 {
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let var = s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    if mean == 0.0 {
        f64::NAN
    } else {
        var.sqrt() / mean
    }
}

/// The CV of one weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightCv {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub cv: f64,
}

/// A compact summary over weights (what `gpt2 --log-update-cv N` writes to metrics.jsonl).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateCvSummary {
    pub mean: f64,
    pub median: f64,
    pub max: f64,
    /// One CV per 2-D weight, in ParamTable order (the names are the table's 2-D entries).
    pub per_weight: Vec<f64>,
}

/// The CV of every 2-D weight of `table` for the update `u` (standard layout, length d).
pub fn per_weight(table: &ParamTable, u: &[f64]) -> Result<Vec<WeightCv>> {
    table
        .entries
        .iter()
        .filter(|e| e.is_matrix())
        .map(|e| {
            Ok(WeightCv {
                name: e.name.clone(),
                rows: e.rows,
                cols: e.cols,
                cv: singular_value_cv(&u[e.range()], e.rows, e.cols)?,
            })
        })
        .collect()
}

/// Mean, median and max over weights (NaN entries ignored; all NaN gives NaN).
pub fn summarize(cvs: &[WeightCv]) -> UpdateCvSummary {
    let mut v: Vec<f64> = cvs.iter().map(|c| c.cv).filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let (mean, median, max) = if n == 0 {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        (v.iter().sum::<f64>() / n as f64, med, v[n - 1])
    };
    UpdateCvSummary {
        mean,
        median,
        max,
        per_weight: cvs.iter().map(|c| c.cv).collect(),
    }
}
