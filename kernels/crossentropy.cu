// crossentropy.cu: fused softmax + cross-entropy with its gradient (llm.c's fused classifier; CPU:
// src/backend/cpu/crossentropy.rs, same formulas):
//   losses[i] = log Σ_j exp(l_j − max) − (l_target − max)    (the sum accumulated in f64)
//   if has_dloss: logits[i] ← s·softmax(logits[i]) − s·onehot(target), computed as e_j·(s·(1/Σ)) then −s.
// Shapes: logits (N,V), losses (N), targets (N).
// Launch: one 256-thread block per row (grid N); block reductions (max, then the f64 sum) are butterflies:
// deterministic.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    crossentropy_forward(float* losses, float* logits, const unsigned int* targets, float dloss,
                         int has_dloss, int n, int v) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const long long row = blockIdx.x;
  if (row >= n) return;  // whole block: the grid is exactly N, kept as a guard
  float* x = logits + row * v;
  float mx = -ROTADAM_INF;
  for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = block_max(mx, shf);
  double sum = 0.0;
  for (int j = threadIdx.x; j < v; j += blockDim.x) sum += static_cast<double>(expf(x[j] - mx));
  sum = block_sum(sum, shd);
  const int tgt = static_cast<int>(targets[row]);
  const float logit_t = x[tgt];
  // Every thread has read x[tgt] (and its own elements) before anyone overwrites logits.
  __syncthreads();
  if (has_dloss) {
    const float k = dloss * static_cast<float>(1.0 / sum);
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
      float g = expf(x[j] - mx) * k;
      if (j == tgt) g -= dloss;
      x[j] = g;
    }
  }
  if (threadIdx.x == 0) losses[row] = static_cast<float>(log(sum)) - (logit_t - mx);
}
