// cuda_emu.h: the CPU emulator's view of CUDA (docs/cuda.md, "The emulator").
//
// The same kernels/*.cu sources are compiled by the host C++ compiler with this header forced in front
// (`-include kernels/emu/cuda_emu.h`, `-DROTADAM_EMU`). Execution model:
//   - blocks of a grid run one after another on the calling OS thread;
//   - the threads of a block are fibers (emu_runtime.cpp) that run ONE AT A TIME, each until its next sync point
//     (__syncthreads, a warp shuffle / __syncwarp, or its end), passing a baton in a fixed order: ascending
//     or descending linear thread index (EmuLaunchCfg::order). After every thread has run to its sync point,
//     the completed barriers are released (a warp whose lanes all wait at a warp op; the block when every
//     thread waits at __syncthreads) and the next pass starts. Every run is therefore deterministic, and a
//     kernel that is race-free gives identical outputs under both orders; a missing barrier (a read of
//     shared memory another thread writes in the same phase) gives different outputs under the two orders,
//     every time, instead of a flaky failure.
//   - __shared__ is a function-level `static` (safe: blocks run one at a time) placed in one ELF section;
//     dynamic shared memory is one buffer per launch (ROTADAM_DYNAMIC_SMEM); both are filled with 0xFF bytes
//     (NaN for floats) before each block, so a read of a word not yet written in this block shows up;
//   - warp shuffles exchange values through a per-warp buffer: write own lane, warp barrier, read the
//     partner's lane, warp barrier;
//   - atomics are plain read-modify-writes (nothing interleaves under the baton).
// Errors (a barrier that some threads never reach, a block larger than 1024 threads, an argument whose size
// does not match the kernel's parameter) abort the launch with a message instead of hanging.
// Launch cost is irrelevant: test shapes are small. One launch at a time per process (a global mutex).
#pragma once
#ifndef ROTADAM_EMU
#define ROTADAM_EMU 1
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <type_traits>
#include <utility>

// ---- the CUDA vocabulary ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Every __shared__ variable goes to one ELF section, which the scheduler fills with 0xFF bytes (NaN for
// floats) before each block, so a read of shared memory not yet written in this block shows up. (GCC
// ignores the section of statics inside templates: kernels keep __shared__ declarations out of templates.)
#define __shared__ static __attribute__((section("rotadam_emu_shared"), aligned(16)))
#define __restrict__ __restrict

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
};

// The current thread's coordinates: set by the scheduler before it resumes a fiber.
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

extern "C" {
// Sync points (defined in emu/emu_runtime.cpp): the calling fiber parks until the barrier is released.
void rotadam_emu_syncthreads(void);
void rotadam_emu_syncwarp(void);
// Per-warp exchange buffer of the calling thread's warp (32 slots of 8 bytes).
uint64_t* rotadam_emu_warp_buffer(void);
// The launch's dynamic shared memory.
void* rotadam_emu_dynamic_smem(void);
}

inline void __syncthreads() { rotadam_emu_syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { rotadam_emu_syncwarp(); }
inline void __threadfence() {}
inline void __threadfence_block() {}

inline unsigned emu_linear_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// Shuffles: T is 4 or 8 bytes.
template <typename T>
inline T emu_shfl(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t* buf = rotadam_emu_warp_buffer();
  unsigned lane = emu_linear_tid() & 31u;
  std::memcpy(&buf[lane], &v, sizeof(T));
  rotadam_emu_syncwarp();
  T r;
  std::memcpy(&r, &buf[src_lane & 31], sizeof(T));
  rotadam_emu_syncwarp();
  return r;
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  unsigned lane = emu_linear_tid() & 31u;
  (void)width;
  return emu_shfl(v, static_cast<int>(lane ^ static_cast<unsigned>(lane_mask)));
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = static_cast<int>(emu_linear_tid() & 31u);
  int src = lane + static_cast<int>(delta);
  return emu_shfl(v, src < width ? src : lane);
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  (void)width;
  return emu_shfl(v, src_lane);
}

// Atomics: plain read-modify-write (only one fiber runs at a time).
template <typename T>
inline T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}

// ---- math -----------------------------------------------------------------------------------------------
using std::exp;
using std::fabs;
using std::log;
using std::sqrt;
using std::tan;
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline double __longlong_as_double(long long x) {
  double f;
  std::memcpy(&f, &x, 8);
  return f;
}
#define CUDART_INF_F __int_as_float(0x7f800000)

// ---- bf16: storage type and round-to-nearest-even conversion (as cuda_bf16.h and Rust's `half`) ---------
struct __nv_bfloat16 {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    r.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return r;
  }
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  r.bits = static_cast<uint16_t>(u >> 16);
  return r;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- dynamic shared memory and the launcher ------------------------------------------------------------
#define ROTADAM_DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(rotadam_emu_dynamic_smem())

/// One kernel argument as Rust passes it: a pointer to the value and the value's size in bytes.
struct EmuArg {
  void* ptr;
  uint64_t size;
};
/// Launch geometry and schedule (0 = ascending thread order, 1 = descending).
struct EmuLaunchCfg {
  uint32_t grid[3];
  uint32_t block[3];
  uint64_t smem;
  int32_t order;
};

extern "C" int rotadam_emu_run(const char* name, void (*thunk)(void* fn, const EmuArg* args), void* fn,
                               const EmuArg* args, const EmuLaunchCfg* cfg, char* err, uint64_t err_len);
extern "C" int rotadam_emu_check_args(const char* name, const EmuArg* args, uint64_t nargs,
                                      const uint64_t* sizes, uint64_t nsizes, char* err,
                                      uint64_t err_len);

template <typename... A, std::size_t... I>
inline void emu_call(void (*f)(A...), const EmuArg* args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_reference_t<A>*>(args[I].ptr)...);
}
template <typename... A>
inline void emu_thunk(void* fn, const EmuArg* args) {
  emu_call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}
template <typename... A>
inline int emu_launch(const char* name, void (*f)(A...), const EmuLaunchCfg* cfg, const EmuArg* args,
                      uint64_t nargs, char* err, uint64_t err_len) {
  const uint64_t sizes[] = {sizeof(A)..., 0};
  int rc = rotadam_emu_check_args(name, args, nargs, sizes, sizeof...(A), err, err_len);
  if (rc != 0) return rc;
  return rotadam_emu_run(name, &emu_thunk<A...>, reinterpret_cast<void*>(f), args, cfg, err, err_len);
}

/// A kernel's parameter list as the C++ compiler sees it: writes the size, the alignment and whether it is
/// a pointer of (up to `cap` of) its parameters and returns their number. The CUDA driver stand-in
/// (kernels/standin) checks PTX parameter lists and pointer arguments against it.
template <typename... A>
inline uint64_t emu_params(void (*)(A...), uint64_t* sizes, uint64_t* aligns, unsigned char* is_pointer,
                           uint64_t cap) {
  const uint64_t s[] = {sizeof(A)..., 0};
  const uint64_t a[] = {alignof(A)..., 0};
  const unsigned char p[] = {static_cast<unsigned char>(std::is_pointer<A>::value)..., 0};
  for (uint64_t i = 0; i < sizeof...(A) && i < cap; ++i) {
    sizes[i] = s[i];
    aligns[i] = a[i];
    is_pointer[i] = p[i];
  }
  return sizeof...(A);
}

/// The extern "C" launcher of one kernel: `rotadam_emu_<name>(cfg, args, nargs, err, err_len)`, and its
/// parameter list `rotadam_emu_params_<name>(sizes, aligns, is_pointer, cap)` (emu_params). build.rs
/// writes one line per `__global__` function found in each .cu file.
#define ROTADAM_EMU_LAUNCHER(name)                                                                   \
  extern "C" int rotadam_emu_##name(const EmuLaunchCfg* cfg, const EmuArg* args, uint64_t nargs,      \
                                    char* err, uint64_t err_len) {                                   \
    return emu_launch(#name, &name, cfg, args, nargs, err, err_len);                                 \
  }                                                                                                  \
  extern "C" uint64_t rotadam_emu_params_##name(uint64_t* sizes, uint64_t* aligns,                    \
                                                unsigned char* is_pointer, uint64_t cap) {           \
    return emu_params(&name, sizes, aligns, is_pointer, cap);                                        \
  }
