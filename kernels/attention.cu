// attention.cu: causal multi-head self-attention computed explicitly, softmax(QKᵀ/√hs)V with the causal
// mask — no flash-style fusion (Maes et al. need the standard attention). CPU: src/backend/cpu/attention.rs.
// Shapes: qkv (B,T,3C) = [q | k | v] on the last axis, head h uses channels h·hs..(h+1)·hs, hs = C/NH;
//         att, scratch (B,NH,T,T); out, dout (B,T,C); dqkv (B,T,3C).
//   attention_softmax_forward: att[t,t2] = softmax_{t2≤t}(q_t·k_t2/√hs) (max-subtracted), 0 for t2 > t  (`=`)
//   attention_value_forward:   out_t = Σ_{t2≤t} att[t,t2]·v_t2, heads re-interleaved (`=`, bf16-rounded)
//   attention_backward_datt:   scratch[t,t2] = att·(da − Σ_t2 att·da)/√hs with da = dout_t·v_t2    (`=`)
//   attention_backward_dqkv:   dq_t += Σ_{t2≤t} s[t,t2] k_t2;  dk_t += Σ_{t1≥t} s[t1,t] q_t1;
//                              dv_t += Σ_{t1≥t} att[t1,t] dout_t1                                      (`+=`)
// Launch: the two row kernels use one warp per (b,h,t) row (256-thread blocks, 8 rows each, grid
// ⌈B·NH·T/8⌉); the other two one thread per (b,t,channel) (256-thread blocks, grid ⌈B·T·C/256⌉). Every sum
// runs in a fixed order (lane-strided then butterfly, or sequential per thread): deterministic.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    attention_softmax_forward(float* att, const float* qkv, int b, int t, int c, int nh) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= static_cast<long long>(b) * nh * t) return;
  const int tq = static_cast<int>(row % t);
  const long long bh = row / t;
  const int h = static_cast<int>(bh % nh), bi = static_cast<int>(bh / nh);
  const int hs = c / nh, c3 = 3 * c;
  const float sc = 1.0f / sqrtf(static_cast<float>(hs));
  const float* base = qkv + static_cast<long long>(bi) * t * c3 + h * hs;
  const float* q = base + static_cast<long long>(tq) * c3;
  float* a = att + row * t;
  float mx = -ROTADAM_INF;
  for (int t2 = lane; t2 <= tq; t2 += 32) {
    const float* k = base + static_cast<long long>(t2) * c3 + c;
    float s = 0.0f;
    for (int i = 0; i < hs; ++i) s += q[i] * k[i];
    s *= sc;
    a[t2] = s;
    mx = fmaxf(mx, s);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int t2 = lane; t2 <= tq; t2 += 32) {
    const float e = expf(a[t2] - mx);
    a[t2] = e;
    sum += e;
  }
  const float inv = 1.0f / warp_sum(sum);
  for (int t2 = lane; t2 < t; t2 += 32) a[t2] = t2 <= tq ? a[t2] * inv : 0.0f;
}

extern "C" __global__ void __launch_bounds__(256)
    attention_value_forward(float* out, const float* att, const float* qkv, int b, int t, int c, int nh,
                            int bf16) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(b) * t * c) return;
  const int ch = static_cast<int>(i % c);
  const long long bt = static_cast<long long>(i / c);
  const int tq = static_cast<int>(bt % t), bi = static_cast<int>(bt / t);
  const int hs = c / nh, h = ch / hs, c3 = 3 * c;
  const float* arow = att + ((static_cast<long long>(bi) * nh + h) * t + tq) * t;
  const float* v = qkv + static_cast<long long>(bi) * t * c3 + 2 * c + ch;
  float acc = 0.0f;
  for (int t2 = 0; t2 <= tq; ++t2) acc += arow[t2] * v[static_cast<long long>(t2) * c3];
  out[i] = store_act(acc, bf16);
}

extern "C" __global__ void __launch_bounds__(256)
    attention_backward_datt(float* scratch, const float* dout, const float* qkv, const float* att, int b,
                            int t, int c, int nh) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= static_cast<long long>(b) * nh * t) return;
  const int tq = static_cast<int>(row % t);
  const long long bh = row / t;
  const int h = static_cast<int>(bh % nh), bi = static_cast<int>(bh / nh);
  const int hs = c / nh, c3 = 3 * c;
  const float sc = 1.0f / sqrtf(static_cast<float>(hs));
  const float* g = dout + (static_cast<long long>(bi) * t + tq) * c + h * hs;
  const float* vbase = qkv + static_cast<long long>(bi) * t * c3 + 2 * c + h * hs;
  const float* a = att + row * t;
  float* s = scratch + row * t;
  float acc = 0.0f;
  for (int t2 = lane; t2 <= tq; t2 += 32) {
    const float* v = vbase + static_cast<long long>(t2) * c3;
    float da = 0.0f;
    for (int i = 0; i < hs; ++i) da += g[i] * v[i];
    s[t2] = da;
    acc += a[t2] * da;
  }
  acc = warp_sum(acc);
  for (int t2 = lane; t2 < t; t2 += 32) s[t2] = t2 <= tq ? a[t2] * (s[t2] - acc) * sc : 0.0f;
}

extern "C" __global__ void __launch_bounds__(256)
    attention_backward_dqkv(float* dqkv, const float* scratch, const float* dout, const float* qkv,
                            const float* att, int b, int t, int c, int nh) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(b) * t * c) return;
  const int ch = static_cast<int>(i % c);
  const long long bt = static_cast<long long>(i / c);
  const int tq = static_cast<int>(bt % t), bi = static_cast<int>(bt / t);
  const int hs = c / nh, h = ch / hs, c3 = 3 * c;
  const long long bh = static_cast<long long>(bi) * nh + h;
  const float* base = qkv + static_cast<long long>(bi) * t * c3 + ch;  // + t·c3 (+c for k, +2c for v)
  const float* srow = scratch + (bh * t + tq) * t;
  float dq = 0.0f;
  for (int t2 = 0; t2 <= tq; ++t2) dq += srow[t2] * base[static_cast<long long>(t2) * c3 + c];
  float dk = 0.0f, dv = 0.0f;
  for (int t1 = tq; t1 < t; ++t1) {
    const long long idx = (bh * t + t1) * t + tq;
    dk += scratch[idx] * base[static_cast<long long>(t1) * c3];
    dv += att[idx] * dout[(static_cast<long long>(bi) * t + t1) * c + ch];
  }
  float* d = dqkv + bt * c3 + ch;
  d[0] += dq;
  d[c] += dk;
  d[2 * c] += dv;
}
