// common.cuh: helpers shared by every kernel file (no __global__ here): warp and block reductions, the
// bf16 rounding of stored activations, and the launch-geometry constants the Rust launchers rely on.
//
// Reductions are butterflies (__shfl_xor_sync): IEEE addition is commutative, so every lane ends with the
// bitwise-same sum and the result does not depend on thread scheduling (the emulator checks this).
// Built three ways (docs/architecture.md, decision 6): nvcc/NVRTC (this file flattened into each .cu by build.rs)
// and the host C++ compiler with kernels/emu/cuda_emu.h forced in front (ROTADAM_EMU defined).
#pragma once

#ifndef ROTADAM_EMU
#include <cuda_bf16.h>
#define ROTADAM_DYNAMIC_SMEM(type, name) \
  extern __shared__ unsigned char rotadam_dyn_smem_[]; \
  type* name = reinterpret_cast<type*>(rotadam_dyn_smem_)
#endif

#define FULL_MASK 0xffffffffu
#define ROTADAM_INF __int_as_float(0x7f800000)

/// x rounded to the nearest bf16 (round-to-nearest-even) and widened back: how `--precision bf16` stores
/// activations (the CPU backend's `Scalar::round_bf16`).
__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

/// `x`, or `x` rounded to bf16 when `bf16` is non-zero.
__device__ __forceinline__ float store_act(float x, int bf16) { return bf16 ? round_bf16(x) : x; }

/// Sum over the 32 lanes of a warp; every lane gets the same bits.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

/// Max over the 32 lanes of a warp.
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

/// Sum over a 1-D block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the same bits. `sh` is a
/// 32-slot shared scratch; the leading barrier makes back-to-back calls safe.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : T(0);
  return warp_sum(r);
}

/// Max over a 1-D block (same contract as block_sum).
__device__ __forceinline__ float block_max(float v, float* sh) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : -ROTADAM_INF;
  return warp_max(r);
}

/// The global index of this thread in a 1-D grid, as 64 bits (tensors of 124M+ elements).
__device__ __forceinline__ unsigned long long global_index() {
  return static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
