// rotation.cu: batched n×n block rotation with a permutation gather, and its transpose with a scatter
// (docs/architecture.md, decision 3; Maes et al. App. C.1; CPU: src/backend/cpu/rotation.rs).
//   rotate_gather:    out[b·N + i] = Σ_j R[i,j] · inp[index[b·N + j]]       (out (NB,N), `=`)
//   unrotate_scatter: out[index[b·N + i]] = Σ_j R[j,i] · inp[b·N + j]       (`=` on the indexed entries
//                     only; index entries are distinct, so no two threads write the same element)
// R is (N,N) row-major, shared by every block (the residual p×p block is a second call with its own R).
// Every scope (global, layer, output, input) is just a different index list, so one kernel serves all.
// Launch: block_gemm.cuh: block (256), grid (⌈NB/64⌉, ⌈N/64⌉).
#include "block_gemm.cuh"

extern "C" __global__ void __launch_bounds__(256)
    rotate_gather(float* out, const float* inp, const unsigned int* index, const float* r, long long nb,
                  int n) {
  __shared__ BlockGemmSmem sm;
  block_gemm<true>(
      sm, r, nb, n, [=](long long b, int j) { return inp[index[b * n + j]]; },
      [=](long long b, int i, float y) { out[b * n + i] = y; });
}

extern "C" __global__ void __launch_bounds__(256)
    unrotate_scatter(float* out, const float* inp, const unsigned int* index, const float* r, long long nb,
                     int n) {
  __shared__ BlockGemmSmem sm;
  block_gemm<false>(
      sm, r, nb, n, [=](long long b, int j) { return inp[b * n + j]; },
      [=](long long b, int i, float y) { out[index[b * n + i]] = y; });
}
