// Kernels with one deliberate global-memory mistake each, selected by `mode` (0: correct).
// Used by sim/tests/global_bounds.rs.

// Raw pointer indexing (checked by the guard regions around every staged buffer).
extern "C" __global__ void gb_raw(const float* src, float* dst, int n, int mode) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int j = i;
  if (mode == 1 && i == n - 1) j = n;  // read one element past the end of src
  if (mode == 2 && i == 0) j = -1;     // read one element before the start of src
  float x = src[j];
  if (mode == 3 && i == 3) dst[n + 1000] = x;  // write far past the end of dst
  else if (mode == 4 && i == 1) dst[-1] = x;   // write one element before the start of dst
  else if (mode == 5 && i == n - 1) dst[n] = x;  // write one element past the end of dst
  else dst[i] = x;
}

// cp.async (checked exactly by the af_cp_async_16 wrapper): 32 threads copy 4 floats each.
extern "C" __global__ void gb_async(const float* src, float* dst, int mode) {
  AF_SHARED(float, tile, 128);
  const int t = threadIdx.x;
  const float* from = src + 4 * t;
  if (mode == 1 && t == 31) from = src + 128;  // one 16-byte chunk past the end
  if (mode == 2 && t == 0) from = src + 2;     // misaligned (byte offset 8)
  if (mode == 3 && t == 5) from = src - 4;     // one chunk before the start
  af_cp_async_16(&tile[4 * t], from);
  af_cp_async_commit();
  af_cp_async_wait<0>();
  __syncthreads();
  for (int e = 0; e < 4; ++e) dst[4 * t + e] = tile[4 * t + e];
}

// Packed 32-bit stores (checked exactly by the af_st_global_b32 wrapper): 32 threads store
// one pair of 16-bit elements each.
extern "C" __global__ void gb_store(unsigned short* dst, int mode) {
  const int t = threadIdx.x;
  unsigned short* at = dst + 2 * t;
  if (mode == 1 && t == 31) at = dst + 64;  // one pair past the end
  if (mode == 2 && t == 2) at = dst + 5;    // misaligned (byte offset 10)
  af_st_global_b32(at, 0x3c003c00u | (unsigned)t);
}
