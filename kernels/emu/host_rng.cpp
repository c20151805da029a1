// host_rng.cpp: the CPU build of counter_rng.cuh, called from Rust (rotadam::kernels::counter_uniform,
// cauchy_probe), so the CPU, the emulator and the GPU share one definition of the probe stream.
#include "../counter_rng.cuh"

extern "C" unsigned long long rotadam_counter_u64(unsigned long long seed, unsigned long long i) {
  return rd_splitmix64(seed, i);
}
extern "C" double rotadam_counter_uniform(unsigned long long seed, unsigned long long i) {
  return rd_uniform(seed, i);
}
extern "C" double rotadam_cauchy_probe(unsigned long long seed, unsigned long long i) {
  return rd_cauchy(seed, i);
}
