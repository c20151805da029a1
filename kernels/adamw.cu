// adamw.cu: optimizer steps. Each formula is one __device__ function below, and every kernel is built from
// them; the CPU's twins (src/backend/cpu/optim.rs, the same names) compute the same expressions in the
// same order, with the hyper-parameters converted on the host by AdamCoeffs (1 − β formed in f64 first):
//   first_moment:     m = β₁m + (1−β₁)g
//   second_moment:    v = β₂v + (1−β₂)g·g
//   adam_denominator, adam_ratio:  u = (m/bc1) / (√(v/bc2) + ε)      bc1 = 1 − β₁ᵗ, bc2 = 1 − β₂ᵗ (host)
//   momentum:         buf = μ·buf + g                                   (torch SGD, dampening 0)
//   ema:              v = β₂v + (1−β₂)s                                 (blockwise second moments, s = mean g²)
//   decayed_step:     p = p·(1 − lr·λ) − lr·u                           (decoupled decay, then the step)
// Kernels:
//   adamw_step:                  the fused AdamW step over one tensor (Maes et al. Alg. 1);
//   adam_direction_step:         m, v and u only (the unfused chain of rotated optimizers);
//   rotate_adam_direction:       rotated AdamW, first half (Maes et al. Alg. 2): g̃ = R·g gathered through
//                                the permutation (block_gemm.cuh), then m, v, u in the rotated layout (NB,N)
//                                in the GEMM's epilogue — one pass over m, v, u;
//   unrotate_apply_update:       second half: p[index] = decayed_step(p, Rᵀũ, lr, 1), the unrotation GEMM
//                                with the step in its epilogue (decoupled decay is applied before, in the
//                                standard basis, per tensor: a coordinate's λ is not a property of its block);
//   sgd_step / sgd_direction_step: momentum, then the decayed step / the direction;
//   block_adam_direction_step:   one second moment per block (AdaSGD = one block over all coordinates, Xie
//                                et al.; blockwise Adam, Alg. 3): first_moment, then adam_ratio with the
//                                block's denominator; v comes from reduce.cu's block_mean_squares, then
//                                ema_inplace;
//   ema_inplace:                 v = ema(v, s) elementwise (s: the block mean squares);
//   apply_update:                the decayed step.
// Launch: elementwise kernels 256-thread blocks, one element per thread; the rotated two as block_gemm.cuh.
#include "block_gemm.cuh"

/// AdamW coefficients of one step in f32 (Rust: backend::AdamCoeffs<f32>, #[repr(C)], the same fields).
struct AdamCoeffs {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay;
};

__device__ __forceinline__ float first_moment(float m, float g, const AdamCoeffs& k) {
  return k.beta1 * m + k.one_minus_beta1 * g;
}
__device__ __forceinline__ float second_moment(float v, float g, const AdamCoeffs& k) {
  return k.beta2 * v + k.one_minus_beta2 * g * g;
}
__device__ __forceinline__ float adam_denominator(float v, const AdamCoeffs& k) { return sqrtf(v / k.bc2) + k.eps; }
__device__ __forceinline__ float adam_ratio(float m, float denominator, const AdamCoeffs& k) {
  return (m / k.bc1) / denominator;
}
/// Updates m, v with g and returns the direction m̂/(√v̂ + ε).
__device__ __forceinline__ float adam_direction(float& m, float& v, float g, const AdamCoeffs& k) {
  m = first_moment(m, g, k);
  v = second_moment(v, g, k);
  return adam_ratio(m, adam_denominator(v, k), k);
}
__device__ __forceinline__ float momentum(float buf, float g, float mu) { return mu * buf + g; }
__device__ __forceinline__ float ema(float v, float s, float beta, float one_minus_beta) {
  return beta * v + one_minus_beta * s;
}
__device__ __forceinline__ float decayed_step(float p, float u, float lr, float decay) { return p * decay - lr * u; }

extern "C" __global__ void __launch_bounds__(256)
    adamw_step(float* params, float* m, float* v, const float* grads, AdamCoeffs hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  float mi = m[i], vi = v[i];
  const float u = adam_direction(mi, vi, grads[i], hp);
  m[i] = mi;
  v[i] = vi;
  params[i] = decayed_step(params[i], u, hp.lr, hp.decay);
}

extern "C" __global__ void __launch_bounds__(256)
    adam_direction_step(float* u, float* m, float* v, const float* grads, AdamCoeffs hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  float mi = m[i], vi = v[i];
  u[i] = adam_direction(mi, vi, grads[i], hp);
  m[i] = mi;
  v[i] = vi;
}

extern "C" __global__ void __launch_bounds__(256)
    rotate_adam_direction(float* u, float* m, float* v, const float* grads, const unsigned int* index,
                          const float* r, AdamCoeffs hp, long long nb, int n) {
  __shared__ BlockGemmSmem sm;
  block_gemm<true>(
      sm, r, nb, n, [=](long long b, int j) { return grads[index[b * n + j]]; },
      [=](long long b, int i, float g) {
        const long long k = b * n + i;
        float mi = m[k], vi = v[k];
        u[k] = adam_direction(mi, vi, g, hp);
        m[k] = mi;
        v[k] = vi;
      });
}

extern "C" __global__ void __launch_bounds__(256)
    unrotate_apply_update(float* params, const float* u, const unsigned int* index, const float* r,
                          float lr, long long nb, int n) {
  __shared__ BlockGemmSmem sm;
  block_gemm<false>(
      sm, r, nb, n, [=](long long b, int j) { return u[b * n + j]; },
      [=](long long b, int i, float y) {
        const unsigned int k = index[b * n + i];
        params[k] = decayed_step(params[k], y, lr, 1.0f);
      });
}

extern "C" __global__ void __launch_bounds__(256)
    sgd_step(float* params, float* momentum_buf, const float* grads, float lr, float mu, float decay,
             long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float b = momentum(momentum_buf[i], grads[i], mu);
  momentum_buf[i] = b;
  params[i] = decayed_step(params[i], b, lr, decay);
}

extern "C" __global__ void __launch_bounds__(256)
    sgd_direction_step(float* u, float* momentum_buf, const float* grads, float mu, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float b = momentum(momentum_buf[i], grads[i], mu);
  momentum_buf[i] = b;
  u[i] = b;
}

extern "C" __global__ void __launch_bounds__(256)
    block_adam_direction_step(float* u, float* m, const float* v, const float* grads, long long block,
                              AdamCoeffs hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float denominator = adam_denominator(v[i / block], hp);
  const float mi = first_moment(m[i], grads[i], hp);
  m[i] = mi;
  u[i] = adam_ratio(mi, denominator, hp);
}

extern "C" __global__ void __launch_bounds__(256)
    ema_inplace(float* v, const float* s, float beta2, float one_minus_beta2, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) v[i] = ema(v[i], s[i], beta2, one_minus_beta2);
}

extern "C" __global__ void __launch_bounds__(256)
    apply_update(float* params, const float* u, float lr, float decay, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) params[i] = decayed_step(params[i], u[i], lr, decay);
}
