// counter_rng.cuh: the counter-based random stream of the Cauchy probes, written once and compiled for the
// GPU (nvcc/NVRTC), the emulator and the CPU (Rust calls the host build of these functions through
// `rotadam::kernels::counter_uniform` / `cauchy_probe`), so every backend draws the same numbers.
//   z(seed, i) = SplitMix64 output number i (0-based) of a generator seeded with `seed`:
//                x = seed + (i+1)·0x9E3779B97F4A7C15; z = mix(x) (Steele, Lea, Flood 2014; the same function
//                as src/rng.rs `splitmix64`, tested) — a pure function of (seed, i), so any thread can draw
//                any element;
//   u(seed, i) = ((z >> 11) + ½)·2⁻⁵³ ∈ (0, 1), never 0 or 1 (53 random bits, bit-identical everywhere);
//   c(seed, i) = tan(π(u − ½)): a standard Cauchy variate by inversion (in f64).
// The integer stream and u are bit-identical on every device; c uses the platform's f64 tan (glibc on the
// CPU and in the emulator: identical; CUDA's tan is within 2 ulp of it, so a GPU value can differ in the
// last bits of the f64 before it is rounded to f32).
#pragma once

#ifdef ROTADAM_EMU
#define RD_HD inline
#else
#define RD_HD __host__ __device__ __forceinline__
#endif

RD_HD unsigned long long rd_splitmix64(unsigned long long seed, unsigned long long i) {
  unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

RD_HD double rd_uniform(unsigned long long seed, unsigned long long i) {
  return (static_cast<double>(rd_splitmix64(seed, i) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

RD_HD double rd_cauchy(unsigned long long seed, unsigned long long i) {
  return tan(3.141592653589793 * (rd_uniform(seed, i) - 0.5));
}
