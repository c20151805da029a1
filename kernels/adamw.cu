// adamw.cu: optimizer steps (CPU: src/backend/cpu/optim.rs — the same per-element expressions, in f32, with
// the hyper-parameters converted on the host exactly as AdamCoeffs does: 1 − β formed in f64 first).
//   AdamW (paper Alg. 1, torch numerics):  m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g·g;
//       u = (m/bc1)/(√(v/bc2) + ε);  p = p·(1 − lr·λ) − lr·u          bc1 = 1 − β₁ᵗ, bc2 = 1 − β₂ᵗ (host)
//   adamw_step:                  the fused step over one tensor;
//   adam_direction_step:         m, v and u only (the split path of rotated optimizers);
//   rotate_adam_direction:       rotated AdamW, first half (Maes et al. Alg. 2): g̃ = R·g gathered through
//                                the permutation (block_gemm.cuh), then m, v, u in the rotated layout (NB,N)
//                                in the GEMM's epilogue — one pass over m, v, u;
//   unrotate_apply_update:       second half: p[index] = p[index] − lr·(Rᵀũ), the unrotation GEMM with the
//                                learning rate in its epilogue (decoupled decay is applied before, in the
//                                standard basis, per tensor: a coordinate's λ is not a property of its block);
//   sgd_step / sgd_direction_step: buf = μ·buf + g; p = p·(1 − lr·λ) − lr·buf (torch, dampening 0);
//   block_adam_direction_step:   one second moment per block (AdaSGD = one block over all coordinates, Xie
//                                et al.; blockwise Adam, Alg. 3): m = β₁m + (1−β₁)g;
//                                u = (m/bc1)/(√(v[i/block]/bc2) + ε); v comes from reduce.cu's
//                                block_mean_squares + ema_inplace;
//   apply_update:                p = p·(1 − lr·λ) − lr·u.
// Launch: elementwise kernels 256-thread blocks, one element per thread; the rotated two as block_gemm.cuh.
#include "block_gemm.cuh"

/// AdamW coefficients of one step in f32 (Rust: backend::cuda / emu `AdamParams`, #[repr(C)]).
struct AdamParams {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay;
};

__device__ __forceinline__ float adam_dir(float& m, float& v, float g, const AdamParams& k) {
  m = k.beta1 * m + k.one_minus_beta1 * g;
  v = k.beta2 * v + k.one_minus_beta2 * g * g;
  const float mhat = m / k.bc1;
  const float vhat = v / k.bc2;
  return mhat / (sqrtf(vhat) + k.eps);
}

extern "C" __global__ void __launch_bounds__(256)
    adamw_step(float* params, float* m, float* v, const float* grads, AdamParams hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  float mi = m[i], vi = v[i];
  const float u = adam_dir(mi, vi, grads[i], hp);
  m[i] = mi;
  v[i] = vi;
  params[i] = params[i] * hp.decay - hp.lr * u;
}

extern "C" __global__ void __launch_bounds__(256)
    adam_direction_step(float* u, float* m, float* v, const float* grads, AdamParams hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  float mi = m[i], vi = v[i];
  u[i] = adam_dir(mi, vi, grads[i], hp);
  m[i] = mi;
  v[i] = vi;
}

extern "C" __global__ void __launch_bounds__(256)
    rotate_adam_direction(float* u, float* m, float* v, const float* grads, const unsigned int* index,
                          const float* r, AdamParams hp, long long nb, int n) {
  __shared__ BlockGemmSmem sm;
  block_gemm<true>(
      sm, r, nb, n, [=](long long b, int j) { return grads[index[b * n + j]]; },
      [=](long long b, int i, float g) {
        const long long k = b * n + i;
        float mi = m[k], vi = v[k];
        u[k] = adam_dir(mi, vi, g, hp);
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
        params[k] = params[k] - lr * y;
      });
}

extern "C" __global__ void __launch_bounds__(256)
    sgd_step(float* params, float* momentum_buf, const float* grads, float lr, float momentum, float decay,
             long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float b = momentum * momentum_buf[i] + grads[i];
  momentum_buf[i] = b;
  params[i] = params[i] * decay - lr * b;
}

extern "C" __global__ void __launch_bounds__(256)
    sgd_direction_step(float* u, float* momentum_buf, const float* grads, float momentum, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float b = momentum * momentum_buf[i] + grads[i];
  momentum_buf[i] = b;
  u[i] = b;
}

extern "C" __global__ void __launch_bounds__(256)
    block_adam_direction_step(float* u, float* m, const float* v, const float* grads, long long block,
                              AdamParams hp, long long n) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(n)) return;
  const float denom = sqrtf(v[i / block] / hp.bc2) + hp.eps;
  const float mi = hp.beta1 * m[i] + hp.one_minus_beta1 * grads[i];
  m[i] = mi;
  u[i] = (mi / hp.bc1) / denom;
}

extern "C" __global__ void __launch_bounds__(256)
    apply_update(float* params, const float* u, float lr, float decay, long long n) {
  const unsigned long long i = global_index();
  if (i < static_cast<unsigned long long>(n)) params[i] = params[i] * decay - lr * u[i];
}
