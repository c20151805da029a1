// residual.cu: the flat elementwise ops of the Backend trait (CPU: src/backend/cpu/elementwise.rs):
//   residual_forward: out = a + b (bf16-rounded when bf16 != 0);  add_inplace: dx += dout;
//   fill: out = value;  scale: out *= s (gradient clipping multiplies by min(1, clip/(‖g‖ + 1e-6)));
//   bias_forward / bias_backward / round_bf16_copy / to_bf16: the pieces around a cuBLAS GEMM (below).
// Launch: 1-D grid of 256 threads, one element per thread; n is 64-bit (124M-element buffers).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    residual_forward(float* out, const float* a, const float* b, long long n, int bf16) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = store_act(a[i] + b[i], bf16);
}

extern "C" __global__ void __launch_bounds__(256) add_inplace(float* dx, const float* dout, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) dx[i] += dout[i];
}

extern "C" __global__ void __launch_bounds__(256) fill(float* out, float value, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = value;
}

extern "C" __global__ void __launch_bounds__(256) scale(float* out, float s, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] *= s;
}

// bias_forward: out (N,OC) += bias (OC) broadcast over rows (after a cuBLAS GEMM; the CPU backend adds
// the bias inside matmul_forward, in the same f32 arithmetic: one addition per element).
extern "C" __global__ void __launch_bounds__(256)
    bias_forward(float* out, const float* bias, long long n, int oc) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n) * oc) out[i] += bias[i % oc];
}

// bias_backward: dbias (OC) += Σ_rows dout (N,OC), one thread per column, rows ascending (deterministic);
// under bf16 each dout is rounded to bf16 first: the gradient of `--precision bf16` is the sum of the
// rounded dout, as in the CPU backend's emulation (whose GEMM operands are rounded the same way).
extern "C" __global__ void __launch_bounds__(256)
    bias_backward(float* dbias, const float* dout, long long n, int oc, int bf16) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= oc) return;
  float acc = 0.0f;
  for (long long r = 0; r < n; ++r) acc += store_act(dout[r * oc + j], bf16);
  dbias[j] += acc;
}

// round_bf16_copy: out = bf16(inp) widened to f32 — the bf16 GEMM operands of `--precision bf16` (the CPU
// backend rounds matmul inputs into scratch copies the same way).
extern "C" __global__ void __launch_bounds__(256)
    round_bf16_copy(float* out, const float* inp, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = round_bf16(inp[i]);
}

// to_bf16: out = bf16(inp) (round-to-nearest-even), stored as bf16 — the operands of the native bf16 cuBLAS
// GEMMs of `--precision bf16` (fp32 accumulation and output): the values of round_bf16_copy in half the bytes.
extern "C" __global__ void __launch_bounds__(256)
    to_bf16(__nv_bfloat16* out, const float* inp, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) out[i] = __float2bfloat16(inp[i]);
}
