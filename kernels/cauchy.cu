// cauchy.cu: Xie et al.'s (1,1)-norm estimator of the Hessian (§3, App. D.2) on the device.
//   cauchy_fill:         out[i] = c(seed, offset + i), the counter-based standard Cauchy stream of
//                        counter_rng.cuh (rounded to f32): probe k of a d-vector uses offset k·d;
//   median_abs_select:   for each coordinate j of a chunk, out[j] = median over k < K of |samples[k·chunk+j]|
//                        by exact selection (Wirth's in-place quickselect on the column; even K: the mean
//                        of the two middle values, numpy's convention). Samples are (K, chunk) row-major
//                        and are overwritten. The caller loops over chunks of coordinates so K × chunk fits
//                        in memory. Since (Hc)_j ~ Cauchy(0, ‖H_j‖₁), the median estimates ‖H_j‖₁;
//   log_abs_accumulate:  acc[j] += log|x[j]| — the streaming estimator with O(d) memory: E log|C| = 0 for a
//                        standard Cauchy C, so exp(acc[j]/K) estimates ‖H_j‖₁ after K probes;
//   log_abs_finalize:    out[j] = exp(acc[j]/K).
// Launch: 256-thread blocks, one coordinate per thread.
#include "common.cuh"
#include "counter_rng.cuh"

extern "C" __global__ void __launch_bounds__(256)
    cauchy_fill(float* out, unsigned long long seed, unsigned long long offset, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = static_cast<float>(rd_cauchy(seed, offset + i));
}

/// The k-th smallest (0-based) of a[0], a[s], …, a[(len−1)·s], reordering them (Wirth 1976).
__device__ __forceinline__ float select_kth(float* a, long long s, int len, int k) {
  int lo = 0, hi = len - 1;
  while (lo < hi) {
    const float x = a[k * s];
    int i = lo, j = hi;
    do {
      while (a[i * s] < x) ++i;
      while (x < a[j * s]) --j;
      if (i <= j) {
        const float t = a[i * s];
        a[i * s] = a[j * s];
        a[j * s] = t;
        ++i;
        --j;
      }
    } while (i <= j);
    if (j < k) lo = i;
    if (k < i) hi = j;
  }
  return a[k * s];
}

extern "C" __global__ void __launch_bounds__(256)
    median_abs_select(float* out, float* samples, int k, long long chunk) {
  const unsigned long long j = global_index();
  if (j >= static_cast<unsigned long long>(chunk) || k <= 0) return;
  float* col = samples + j;
  for (int q = 0; q < k; ++q) col[q * chunk] = fabsf(col[q * chunk]);
  const int mid = (k - 1) / 2;
  const float lower = select_kth(col, chunk, k, mid);
  if (k % 2 == 1) {
    out[j] = lower;
    return;
  }
  // Even K: after the selection every element above position mid is ≥ lower; the upper middle is their min.
  float upper = col[(mid + 1) * chunk];
  for (int q = mid + 2; q < k; ++q) upper = fminf(upper, col[q * chunk]);
  out[j] = 0.5f * (lower + upper);
}

extern "C" __global__ void __launch_bounds__(256)
    log_abs_accumulate(float* acc, const float* x, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) acc[i] += logf(fabsf(x[i]));
}

extern "C" __global__ void __launch_bounds__(256)
    log_abs_finalize(float* out, const float* acc, int k, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = expf(acc[i] / static_cast<float>(k));
}
