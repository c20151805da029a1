// residual.cu: the flat elementwise ops of the Backend trait (CPU: src/backend/cpu/elementwise.rs):
//   residual_forward: out = a + b (bf16-rounded when bf16 != 0);  add_inplace: dx += dout;
//   fill: out = value;  scale: out *= s (gradient clipping multiplies by min(1, clip/(‖g‖ + 1e-6))).
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
