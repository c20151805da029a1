// gelu.cu: GELU, tanh approximation (CPU: src/backend/cpu/elementwise.rs, same formula and evaluation).
//   forward:  out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))) evaluated as x·σ(2u), σ(z) = 1/(1 + e^(−z))
//             (`=`, bf16-rounded when bf16 != 0);
//   backward: dinp += dout·(σ + 2x·σ(1−σ)·√(2/π)(1 + 3·0.044715x²)), with 1 − σ = σ·e^(−2u) (0 where
//             e^(−2u) overflows).
// Launch: 1-D grid of 256 threads, one element per thread.
#include "common.cuh"

#define GELU_SCALE 0.7978845608028654f
#define GELU_CUBE 0.044715f

extern "C" __global__ void __launch_bounds__(256)
    gelu_forward(float* out, const float* inp, long long n, int bf16) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float x = inp[i];
  const float e = expf(-2.0f * GELU_SCALE * (x + GELU_CUBE * x * x * x));
  out[i] = store_act(x / (1.0f + e), bf16);
}

extern "C" __global__ void __launch_bounds__(256)
    gelu_backward(float* dinp, const float* inp, const float* dout, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float x = inp[i], x2 = x * x;
  const float e = expf(-2.0f * GELU_SCALE * (x + GELU_CUBE * x2 * x));
  const float sig = 1.0f / (1.0f + e);
  const float one_minus_sig = isinf(e) ? 0.0f : sig * e;
  const float local = sig + x * sig * one_minus_sig * (2.0f * GELU_SCALE) * (1.0f + 3.0f * GELU_CUBE * x2);
  dinp[i] += local * dout[i];
}
