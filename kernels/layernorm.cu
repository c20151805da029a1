// layernorm.cu: LayerNorm over the last axis, eps = 1e-5 (CPU: src/backend/cpu/layernorm.rs; llm.c math).
//   forward:  mean = Σx/C; rstd = 1/√(Σ(x − mean)²/C + eps) (two passes, as the CPU backend);
//             out = (x − mean)·rstd·weight + bias     (out `=`, bf16-rounded when bf16 != 0; mean/rstd `=`)
//   backward: norm = (x − mean)·rstd, dnorm = weight·dout,
//             dinp += rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm))            (layernorm_backward_dinp)
//             dweight += Σ_rows norm·dout, dbias += Σ_rows dout (rows ascending)   (layernorm_backward_dweight)
// Shapes: inp/out/dout/dinp (N,C), weight/bias (C), mean/rstd (N). bias/dbias may be null.
// Launch: forward and dinp: one warp per row, 256-thread blocks (8 rows per block), grid ⌈N/8⌉;
//         dweight: one thread per channel, 256-thread blocks, grid ⌈C/256⌉ (no atomics: deterministic).
#include "common.cuh"

#define LN_EPS 1e-5f

extern "C" __global__ void __launch_bounds__(256)
    layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int n, int c, int bf16) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= n) return;  // a whole warp leaves together: no warp op is left half-reached
  const float* x = inp + row * c;
  float s = 0.0f;
  for (int i = lane; i < c; i += 32) s += x[i];
  const float m = warp_sum(s) / static_cast<float>(c);
  float v = 0.0f;
  for (int i = lane; i < c; i += 32) {
    const float d = x[i] - m;
    v += d * d;
  }
  const float r = 1.0f / sqrtf(warp_sum(v) / static_cast<float>(c) + LN_EPS);
  float* o = out + row * c;
  for (int i = lane; i < c; i += 32) {
    float y = (x[i] - m) * r * weight[i];
    if (bias != nullptr) y += bias[i];
    o[i] = store_act(y, bf16);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

extern "C" __global__ void __launch_bounds__(256)
    layernorm_backward_dinp(float* dinp, const float* dout, const float* inp, const float* weight,
                            const float* mean, const float* rstd, int n, int c) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= n) return;
  const float* x = inp + row * c;
  const float* g = dout + row * c;
  const float m = mean[row], rs = rstd[row];
  float sd = 0.0f, sdn = 0.0f;
  for (int i = lane; i < c; i += 32) {
    const float dn = weight[i] * g[i];
    sd += dn;
    sdn += dn * (x[i] - m) * rs;
  }
  const float dnorm_mean = warp_sum(sd) / static_cast<float>(c);
  const float dnorm_norm_mean = warp_sum(sdn) / static_cast<float>(c);
  float* d = dinp + row * c;
  for (int i = lane; i < c; i += 32) {
    const float nm = (x[i] - m) * rs;
    d[i] += rs * (weight[i] * g[i] - dnorm_mean - nm * dnorm_norm_mean);
  }
}

extern "C" __global__ void __launch_bounds__(256)
    layernorm_backward_dweight(float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* mean, const float* rstd, int n, int c) {
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  float dw = 0.0f, db = 0.0f;
  for (long long row = 0; row < n; ++row) {
    const float g = dout[row * c + ch];
    dw += (inp[row * c + ch] - mean[row]) * rstd[row] * g;
    db += g;
  }
  dweight[ch] += dw;
  if (dbias != nullptr) dbias[ch] += db;
}
