// 11 barriers and 10 shuffles per thread (double-buffered, so race-free); shared by the benches.
extern "C" __global__ void bench_barriers(const float* x, float* out) {
  AF_SHARED(float, s, 2 * 128);
  int t = threadIdx.x;
  float v = x[blockIdx.x * 128 + t];
  for (int r = 0; r < 10; r++) {
    int base = (r & 1) * 128;
    s[base + t] = v;
    __syncthreads();
    v = 0.5f * (v + s[base + ((t + 1) & 127)]);
    v += __shfl_xor_sync(0xffffffffu, v, 1 << (r % 5)) * 0.25f;
  }
  __syncthreads();
  out[blockIdx.x * 128 + t] = v;
}
