// encoder.cu: token + position embedding, forward and backward (llm.c's encoder; CPU:
// src/backend/cpu/elementwise.rs).
//   forward:  out (B,T,C) = wte[tokens[b,t]] + wpe[t]                                (`=`, bf16-rounded)
//   backward: dwpe[t] += Σ_b dout[b,t]  (b ascending);  dwte[tok] += dout[p] for every position p holding
//             tok, in ascending p — the host sorts (token, position) pairs and passes the runs, so no
//             atomics and the same addition order as the CPU backend.
// Launch: 1-D grids of 256 threads, one thread per output element (forward, dwpe) or per (run, channel).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    encoder_forward(float* out, const unsigned int* tokens, const float* wte, const float* wpe, int bt,
                    int t, int c, int bf16) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(bt) * c) return;
  const int row = static_cast<int>(i / c), ch = static_cast<int>(i % c);
  const unsigned long long tok = tokens[row];
  out[i] = store_act(wte[tok * c + ch] + wpe[static_cast<long long>(row % t) * c + ch], bf16);
}

extern "C" __global__ void __launch_bounds__(256)
    encoder_backward_wpe(float* dwpe, const float* dout, int b, int t, int c) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(t) * c) return;
  const int pos = static_cast<int>(i / c), ch = static_cast<int>(i % c);
  float acc = dwpe[i];
  for (int bi = 0; bi < b; ++bi) acc += dout[(static_cast<long long>(bi) * t + pos) * c + ch];
  dwpe[i] = acc;
}

// runs (nruns+1): run r covers order[runs[r] .. runs[r+1]]; order holds the flattened positions sorted by
// (token, position); tokens[order[j]] is the run's token.
extern "C" __global__ void __launch_bounds__(256)
    encoder_backward_wte(float* dwte, const float* dout, const unsigned int* tokens,
                         const unsigned int* order, const unsigned int* runs, int nruns, int c) {
  const unsigned long long i = global_index();
  if (i >= static_cast<unsigned long long>(nruns) * c) return;
  const int r = static_cast<int>(i / c), ch = static_cast<int>(i % c);
  const unsigned int lo = runs[r], hi = runs[r + 1];
  const unsigned long long tok = tokens[order[lo]];
  float acc = dwte[tok * c + ch];
  for (unsigned int j = lo; j < hi; ++j) acc += dout[static_cast<unsigned long long>(order[j]) * c + ch];
  dwte[tok * c + ch] = acc;
}
