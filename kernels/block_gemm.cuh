// block_gemm.cuh: the tiled GEMM behind every block rotation (rotation.cu, adamw.cu). No __global__ here.
//
// Computes, for a batch of NB length-N blocks, C (NB,N) = A (NB,N) · B (N,N) with
//   A[b,j] = load_a(b, j)              (a gather through the permutation, or a plain read)
//   B[j,i] = R[i·N + j]  (TRANSPOSE_R)  → C = A·Rᵀ: row b of C is R·a_b        (rotate)
//   B[j,i] = R[j·N + i]  (otherwise)    → C = A·R:  row b of C is Rᵀ·a_b       (unrotate)
// and hands each C[b,i] to epilogue(b, i, value) — where the fused optimizer math happens.
// Tiling: 64 blocks × 64 output coordinates per 256-thread CUDA block, K in steps of 16, both operand
// tiles staged through shared memory (R_n is read once per 64 rotation blocks instead of once per block);
// each thread accumulates a 4×4 sub-tile at rows ty + 16r and columns tx + 16c (conflict-free reads).
// Every bound is checked, so N and NB need not be multiples of the tile (n not dividing d is the residual
// block: a separate call with its own p×p R). Launch: block (256), grid (⌈NB/64⌉, ⌈N/64⌉): the number of
// blocks on x, whose limit is 2^31 − 1 (y allows 65,535: 124M coordinates at n = 16 would exceed it).
// The K loop runs in ascending order for every output: results do not depend on scheduling.
#pragma once
#include "common.cuh"

#define BG_BM 64
#define BG_BN 64
#define BG_BK 16

/// The shared-memory tiles of block_gemm, declared by each kernel (not inside the template: the emulator
/// poisons every `__shared__` variable between blocks, which it can only find outside templates).
struct BlockGemmSmem {
  float as[BG_BK][BG_BM];
  float bs[BG_BK][BG_BN];
};

template <bool TRANSPOSE_R, typename LoadA, typename Epilogue>
__device__ __forceinline__ void block_gemm(BlockGemmSmem& sm, const float* __restrict__ r, long long nb,
                                           int n, LoadA load_a, Epilogue epilogue) {
  float(&as)[BG_BK][BG_BM] = sm.as;
  float(&bs)[BG_BK][BG_BN] = sm.bs;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const long long b0 = static_cast<long long>(blockIdx.x) * BG_BM;
  const int i0 = blockIdx.y * BG_BN;
  float acc[4][4];
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
  for (int k0 = 0; k0 < n; k0 += BG_BK) {
    for (int q = 0; q < (BG_BM * BG_BK) / 256; ++q) {
      const int l = tid + 256 * q;
      const int kk = l % BG_BK, row = l / BG_BK;
      const long long b = b0 + row;
      const int j = k0 + kk;
      as[kk][row] = (b < nb && j < n) ? load_a(b, j) : 0.0f;
    }
    for (int q = 0; q < (BG_BN * BG_BK) / 256; ++q) {
      const int l = tid + 256 * q;
      int kk, col;
      if (TRANSPOSE_R) {
        kk = l % BG_BK;  // R[i·N + j]: consecutive j are consecutive in memory
        col = l / BG_BK;
      } else {
        col = l % BG_BN;  // R[j·N + i]: consecutive i are consecutive in memory
        kk = l / BG_BN;
      }
      const int i = i0 + col, j = k0 + kk;
      float val = 0.0f;
      if (i < n && j < n) val = TRANSPOSE_R ? r[static_cast<long long>(i) * n + j] : r[static_cast<long long>(j) * n + i];
      bs[kk][col] = val;
    }
    __syncthreads();
    for (int kk = 0; kk < BG_BK; ++kk) {
      float av[4], bv[4];
      for (int a = 0; a < 4; ++a) av[a] = as[kk][ty + 16 * a];
      for (int b = 0; b < 4; ++b) bv[b] = bs[kk][tx + 16 * b];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a][b] += av[a] * bv[b];
    }
    __syncthreads();
  }
  for (int a = 0; a < 4; ++a) {
    const long long b = b0 + ty + 16 * a;
    if (b >= nb) continue;
    for (int c = 0; c < 4; ++c) {
      const int i = i0 + tx + 16 * c;
      if (i < n) epilogue(b, i, acc[a][c]);
    }
  }
}
