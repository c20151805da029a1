// reduce.cu: flat reductions (CPU: src/backend/cpu/elementwise.rs sum_squares, optim.rs block_mean_squares)
// and gradient clipping on the device.
//   sum_squares_partial: partial[blk] = Σ x² over elements blk·CHUNK .. (blk+1)·CHUNK, in f64;
//   sum_partials:        out[0] = Σ partial[i] in index order (one block) → ‖g‖² deterministic for any
//                        grid size (the CPU sums fixed 65,536-element chunks in order too, but with 8
//                        lanes: the two differ by f64 rounding only);
//   clip_by_norm:        x *= max_norm/(√sumsq + 1e-6) when that is < 1 (torch clip_grad_norm_), reading
//                        ‖g‖² from device memory, so no host round trip;
//   block_mean_squares:  out[i] = mean(x[i·block .. (i+1)·block]²) in f64 (one 256-thread block per out);
//                        the optimizer then folds it into its second moments with adamw.cu's ema_inplace
//                        (the formula lives with the other optimizer formulas).
// Launch: sum_squares_partial: 256-thread blocks, grid ⌈n/REDUCE_CHUNK⌉; sum_partials: one 1024-thread
// block; the elementwise ones 256-thread blocks, one element per thread.
#include "common.cuh"

#define REDUCE_CHUNK 65536

extern "C" __global__ void __launch_bounds__(256)
    sum_squares_partial(double* partial, const float* x, long long n) {
  __shared__ double sh[32];
  const long long lo = static_cast<long long>(blockIdx.x) * REDUCE_CHUNK;
  const long long hi = lo + REDUCE_CHUNK < n ? lo + REDUCE_CHUNK : n;
  double acc = 0.0;
  for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double y = x[i];
    acc += y * y;
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

extern "C" __global__ void __launch_bounds__(1024)
    sum_partials(double* out, const double* partial, int nparts) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) out[0] = acc;
}

extern "C" __global__ void __launch_bounds__(256)
    clip_by_norm(float* x, const double* sumsq, float max_norm, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const double norm = sqrt(sumsq[0]);
  const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
  if (max_norm > 0.0f && !isinf(norm) && !isnan(norm) && coef < 1.0) x[i] *= static_cast<float>(coef);
}

extern "C" __global__ void __launch_bounds__(256)
    block_mean_squares(float* out, const float* x, long long block, long long nblocks) {
  __shared__ double sh[32];
  const long long bi = blockIdx.x;
  if (bi >= nblocks) return;
  const float* xs = x + bi * block;
  double acc = 0.0;
  for (long long i = threadIdx.x; i < block; i += blockDim.x) {
    const double y = xs[i];
    acc += y * y;
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) out[bi] = static_cast<float>(acc / static_cast<double>(block));
}
