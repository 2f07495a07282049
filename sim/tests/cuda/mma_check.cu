// mma.m16n8k16 (f16, bf16) with hand-loaded fragments and with ldmatrix x4 / x2 / x4.trans.
// Used by tests/correct.rs on the simulator; on a GPU, paste the codegen prelude in front
// and compare the outputs with the simulator's to confirm the fragment layouts.
// Launch: 1 block of 32 threads. Arguments: A [16][16] row-major, B8 [16][8] (k, n),
// B16 [16][16] (k, n), Bt [8][16] (= B8 transposed), C [16][8] f32, then four [16][8] f32
// outputs: Dr (register fragments), D0 (ldmatrix x4 + x2), D1, D2 (x4.trans, n-tiles 0, 1).
template <class T>
__device__ unsigned pack(T lo, T hi) {
  unsigned short l, h;
  memcpy(&l, &lo, 2); memcpy(&h, &hi, 2);
  return (unsigned)l | ((unsigned)h << 16);
}
template <class T, bool BF>
__device__ void mma_regs(const T* A, const T* B, const float* C, float* D) {
  int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  unsigned a[4], b[2];
  a[0] = pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
  a[1] = pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
  a[2] = pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
  a[3] = pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
  b[0] = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
  b[1] = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
  float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  if (BF) af_mma_m16n8k16_bf16(acc, a, b, acc); else af_mma_m16n8k16_f16(acc, a, b, acc);
  D[g * 8 + 2 * t] = acc[0]; D[g * 8 + 2 * t + 1] = acc[1];
  D[(g + 8) * 8 + 2 * t] = acc[2]; D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
// A row-major [16][16]; B row-major [k=16][n=16] (two n-tiles); Bt = B^T [n=8][k=16] row-major.
template <class T, bool BF>
__device__ void mma_ldm(const T* A, const T* B, const T* Bt, const float* C, float* D0, float* D1, float* D2) {
  AF_SHARED(T, sA, 256);
  AF_SHARED(T, sB, 256);
  AF_SHARED(T, sBt, 128);
  int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 256; i += 32) { sA[i] = A[i]; sB[i] = B[i]; }
  for (int i = lane; i < 128; i += 32) sBt[i] = Bt[i];
  __syncwarp();
  unsigned a[4], bt[2], b[4];
  af_ldmatrix_x4(a, &sA[(lane % 16) * 16 + (lane / 16) * 8]);
  af_ldmatrix_x2(bt, &sBt[(lane % 8) * 16 + ((lane / 8) % 2) * 8]);
  int q = lane / 8, r = lane % 8;
  af_ldmatrix_x4_trans(b, &sB[(r + 8 * (q & 1)) * 16 + 8 * (q >> 1)]);
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  float d[3][4];
  if (BF) {
    af_mma_m16n8k16_bf16(d[0], a, bt, c);
    af_mma_m16n8k16_bf16(d[1], a, b, c);
    af_mma_m16n8k16_bf16(d[2], a, b + 2, c);
  } else {
    af_mma_m16n8k16_f16(d[0], a, bt, c);
    af_mma_m16n8k16_f16(d[1], a, b, c);
    af_mma_m16n8k16_f16(d[2], a, b + 2, c);
  }
  float* Ds[3] = {D0, D1, D2};
  for (int m = 0; m < 3; m++) {
    Ds[m][g * 8 + 2 * t] = d[m][0]; Ds[m][g * 8 + 2 * t + 1] = d[m][1];
    Ds[m][(g + 8) * 8 + 2 * t] = d[m][2]; Ds[m][(g + 8) * 8 + 2 * t + 1] = d[m][3];
  }
}
extern "C" __global__ void mma_f16(const __half* A, const __half* B8, const __half* B16, const __half* Bt,
                                   const float* C, float* Dr, float* D0, float* D1, float* D2) {
  mma_regs<__half, false>(A, B8, C, Dr);
  mma_ldm<__half, false>(A, B16, Bt, C, D0, D1, D2);
}
extern "C" __global__ void mma_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B8, const __nv_bfloat16* B16,
                                    const __nv_bfloat16* Bt, const float* C, float* Dr, float* D0, float* D1, float* D2) {
  mma_regs<__nv_bfloat16, true>(A, B8, C, Dr);
  mma_ldm<__nv_bfloat16, true>(A, B16, Bt, C, D0, D1, D2);
}
