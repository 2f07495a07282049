// Hopper helpers on the simulator: wgmma (both A sources, every swizzle mode), mbarriers,
// TMA / bulk copies, setmaxnreg. Used by tests/hopper.rs; `mode` selects a deliberate
// mistake (0: correct).
//
// Shared memory placement is written here from the PTX ISA's description of the canonical
// K-major layouts (not from the shim's descriptor decoder): a tile of `rows` x KT 16-bit
// elements; without swizzle (KT = 16) element (r, k) is at (r/8)*SBO + (k/8)*LBO + (r%8)*16
// + (k%8)*2; with a T-byte swizzle (KT = T/2) rows are T bytes, 8-row atoms SBO = 8T apart,
// and the 16-byte chunk c of row r is stored at chunk c ^ p(r), p(r) = r%8 (128B),
// (r/2)%4 (64B), (r/4)%2 (32B).

__device__ int swz_pattern(int r, int swz) {
  return swz == 128 ? r % 8 : swz == 64 ? (r / 2) % 4 : (r / 4) % 2;
}
__device__ int place(int r, int k, int swz, int lbo, int sbo) {
  if (swz == 0) return (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
  int chunk = (2 * k) / 16;
  return (r / 8) * (8 * swz) + (r % 8) * swz + ((chunk ^ swz_pattern(r, swz)) * 16) + (2 * k) % 16;
}

// MN-major B (imm-trans-b): element (n, k) of a tile with N contiguous. Without swizzle,
// core matrices of 8 k-rows x 8 n (16 bytes per k-row): (n%8)*2 + (n/8)*SBO + (k%8)*16 +
// (k/8)*LBO; with a T-byte swizzle each k is a T-byte row of T/2 consecutive n, 8 k-rows form
// an atom: chunk-swizzled by the k-row index, n-blocks of T/2 LBO apart, k-groups SBO apart.
__device__ int place_mn(int n, int k, int swz, int lbo, int sbo) {
  if (swz == 0) return (n % 8) * 2 + (n / 8) * sbo + (k % 8) * 16 + (k / 8) * lbo;
  const int per_row = swz / 2, within = 2 * (n % per_row);
  return (n / per_row) * lbo + (k / 8) * sbo + (k % 8) * swz + (((within / 16) ^ swz_pattern(k % 8, swz)) * 16) +
         within % 16;
}

constexpr int kBOff = 16384;  // byte offset of the B tile (1024-aligned)

// A: [64][KT], B: [N][KT] (B^T: row n holds column n of B), C, D: [64][N] f32.
// layout (no swizzle only): 0 = K-direction core matrices adjacent (LBO 128, SBO 256),
// 1 = row-direction core matrices adjacent (LBO rows*16, SBO 128).
// The instruction(s) use k-steps kstep .. kstep+nsteps-1 (16 columns each).
// mode 1: no wgmma.fence; 2: read the accumulator before wait_group; 3: wait_group<1> with
// one group committed, then read; 4: thread 5 passes a different descriptor A.
template <int N, bool BF, bool AREG, bool BMN = false>
__device__ void wg_test(const unsigned short* A, const unsigned short* B, const float* C, float* D, int swz,
                        int layout, int kstep, int nsteps, int scale_d, int mode) {
  AF_DYNAMIC_SHARED(unsigned short, sm);
  const int t = threadIdx.x, KT = swz ? swz / 2 : 16;
  const int lbo_a = swz ? 16 : layout == 0 ? 128 : 64 * 16, sbo_a = swz ? 8 * swz : layout == 0 ? 256 : 128;
  int lbo_b = swz ? 16 : layout == 0 ? 128 : N * 16, sbo_b = swz ? 8 * swz : layout == 0 ? 256 : 128;
  if (BMN) {
    // n-groups adjacent, then k-groups (no swizzle); k-groups of 8 rows adjacent atoms, then
    // n-blocks (swizzled)
    lbo_b = swz ? KT * swz : N * 16;
    sbo_b = swz ? 8 * swz : 128;
  }
  for (int e = t; e < 64 * KT; e += 128) sm[place(e / KT, e % KT, swz, lbo_a, sbo_a) / 2] = A[e];
  for (int e = t; e < N * KT; e += 128)
    sm[(kBOff + (BMN ? place_mn(e / KT, e % KT, swz, lbo_b, sbo_b) : place(e / KT, e % KT, swz, lbo_b, sbo_b))) / 2] =
        B[e];
  af_fence_proxy_async();
  __syncthreads();
  const int w = t / 32, g = (t % 32) / 4, q = t % 4;
  af_wgmma_acc<N> acc;
  // D fragment of m64nNk16 (PTX ISA): d_i at row 16w + g + 8*((i>>1)&1), column 8*(i/4) + 2q + (i&1)
  for (int i = 0; i < N / 2; i++) acc[i] = C[(16 * w + g + 8 * ((i >> 1) & 1)) * N + 8 * (i / 4) + 2 * q + (i & 1)];
  if (mode != 1) af_wgmma_fence();
  for (int s = kstep; s < kstep + nsteps; s++) {
    // k-step s starts 32 bytes further along the row (swizzled), or 2 core matrices (LBO) on
    const int step_bytes = swz ? 32 * s : 2 * lbo_a * s;
    // MN-major B: k-step s is 16 k-rows = 2 k-groups further
    const int step_bytes_b = BMN ? (swz ? 2 * sbo_b * s : 2 * lbo_b * s) : swz ? 32 * s : 2 * lbo_b * s;
    unsigned long long da = af_wgmma_desc(&sm[0] + step_bytes / 2, lbo_a, sbo_a, swz);
    if (mode == 4 && t == 5) da += 2;  // not warpgroup-uniform
    unsigned long long db = af_wgmma_desc(&sm[0] + (kBOff + step_bytes_b) / 2, lbo_b, sbo_b, swz);
    const int sc = s == kstep ? scale_d : 1;
    if (AREG) {
      // A fragment (as mma.m16n8k16 per warp): a_i at row 16w + g + 8*((i>>1)&1), column
      // 2q + (i&1) + 8*(i>=4)
      unsigned a[4];
      for (int j = 0; j < 4; j++) {
        unsigned v = 0;
        for (int h = 0; h < 2; h++) {
          int i = 2 * j + h, row = 16 * w + g + 8 * ((i >> 1) & 1), col = 16 * s + 2 * q + (i & 1) + 8 * (i >= 4);
          v |= unsigned(A[row * KT + col]) << (16 * h);
        }
        a[j] = v;
      }
      if (BMN) {
        if (BF) af_wgmma_m64k16_bf16_rs_bmn<N>(acc, a, db, sc);
        else af_wgmma_m64k16_f16_rs_bmn<N>(acc, a, db, sc);
      } else {
        if (BF) af_wgmma_m64k16_bf16_rs<N>(acc, a, db, sc);
        else af_wgmma_m64k16_f16_rs<N>(acc, a, db, sc);
      }
    } else if (BMN) {
      if (BF) af_wgmma_m64k16_bf16_ss_bmn<N>(acc, da, db, sc);
      else af_wgmma_m64k16_f16_ss_bmn<N>(acc, da, db, sc);
    } else {
      if (BF) af_wgmma_m64k16_bf16_ss<N>(acc, da, db, sc);
      else af_wgmma_m64k16_f16_ss<N>(acc, da, db, sc);
    }
  }
  af_wgmma_commit_group();
  if (mode == 2) D[0] = acc[0];
  if (mode == 3) af_wgmma_wait_group<1>();
  else af_wgmma_wait_group<0>();
  for (int i = 0; i < N / 2; i++) D[(16 * w + g + 8 * ((i >> 1) & 1)) * N + 8 * (i / 4) + 2 * q + (i & 1)] = acc[i];
}

// One kernel for every tested shape (one simulator build): `which` selects
// (N, bf16, A in registers, B MN-major), in the order of WGS in tests/hopper.rs.
#define WG_CASE(I, N, BF, AREG, BMN) \
  case I: wg_test<N, BF, AREG, BMN>(A, B, C, D, swz, layout, kstep, nsteps, scale_d, mode); break;
extern "C" __global__ void wg_any(const unsigned short* A, const unsigned short* B, const float* C, float* D, int swz,
                                  int layout, int kstep, int nsteps, int scale_d, int mode, int which) {
  switch (which) {
    WG_CASE(0, 8, false, false, false)
    WG_CASE(1, 24, false, false, false)
    WG_CASE(2, 64, false, false, false)
    WG_CASE(3, 128, false, false, false)
    WG_CASE(4, 256, false, false, false)
    WG_CASE(5, 64, true, false, false)
    WG_CASE(6, 256, true, false, false)
    WG_CASE(7, 64, false, true, false)
    WG_CASE(8, 128, false, true, false)
    WG_CASE(9, 256, true, true, false)
    WG_CASE(10, 64, false, false, true)
    WG_CASE(11, 128, true, true, true)
    WG_CASE(12, 256, false, true, true)
    default: af_require(false, "wg_any: unknown `which`");
  }
}

// TMA: thread 0 loads one box of `tmap` (whose tensor is argument 1) at the coordinates;
// every thread waits on the mbarrier, then the raw shared image (box_bytes) is copied out.
// mode 1: expect 16 bytes too many; 2: nobody arrives; 3: thread 1 reads before the wait.
extern "C" __global__ void tma_box(const unsigned char* tmap, const unsigned short* src, unsigned short* out,
                                   int rank, int c0, int c1, int c2, int c3, int c4, int box_bytes, int mode) {
  AF_SHARED(unsigned long long, bar, 1);
  AF_DYNAMIC_SHARED(unsigned short, sm);
  const int t = threadIdx.x;
  if (t == 0) af_mbarrier_init(&bar[0], 1);
  __syncthreads();
  if (t == 0 && mode != 2) {
    af_mbarrier_arrive_expect_tx(&bar[0], box_bytes + (mode == 1 ? 16 : 0));
    void* dst = &sm[0];
    if (rank == 1) af_tma_load_1d(dst, tmap, c0, &bar[0]);
    if (rank == 2) af_tma_load_2d(dst, tmap, c0, c1, &bar[0]);
    if (rank == 3) af_tma_load_3d(dst, tmap, c0, c1, c2, &bar[0]);
    if (rank == 4) af_tma_load_4d(dst, tmap, c0, c1, c2, c3, &bar[0]);
    if (rank == 5) af_tma_load_5d(dst, tmap, c0, c1, c2, c3, c4, &bar[0]);
  }
  if (mode == 3 && t == 1) out[0] = sm[0];
  af_mbarrier_wait_parity(&bar[0], 0);
  for (int e = t; e < box_bytes / 2; e += blockDim.x) out[e] = sm[e];
  (void)src;
}

// Two bulk copies of 256 bytes complete one expect-tx of 512 bytes (mode 1: 528, never
// completes; 2: the barrier is never initialised).
extern "C" __global__ void bulk2(const float* src, float* out, int mode) {
  AF_SHARED(unsigned long long, bar, 1);
  AF_SHARED(float, buf, 128);
  const int t = threadIdx.x;
  if (t == 0 && mode != 2) af_mbarrier_init(&bar[0], 1);
  __syncthreads();
  if (t == 0) {
    af_mbarrier_arrive_expect_tx(&bar[0], 512 + (mode == 1 ? 16 : 0));
    af_bulk_load(&buf[0], src, 256, &bar[0]);
    af_bulk_load(&buf[0] + 64, src + 64, 256, &bar[0]);
  }
  af_mbarrier_wait_parity(&bar[0], 0);
  for (int e = t; e < 128; e += blockDim.x) out[e] = buf[e];
}

// Three phases of a 64-thread barrier: each thread publishes a value, arrives, waits for the
// phase's parity and reads its neighbour's value. Thread 0 polls test_wait before arriving
// (a poll of an incomplete phase returns false). out[3t + p] = neighbour's value in phase p;
// out[192 + p] = number of false polls of thread 0 in phase p (> 0).
extern "C" __global__ void mbar_phases(int* out, int mode) {
  AF_SHARED(unsigned long long, bar, 1);
  AF_SHARED(int, val, 2 * 64);
  const int t = threadIdx.x;
  if (t == 0) af_mbarrier_init(&bar[0], 64);
  __syncthreads();
  for (int p = 0; p < 3; p++) {
    const int slot = (p & 1) * 64;
    val[slot + t] = 100 * p + t;
    if (t == 0) {
      int polls = 0;
      while (!af_mbarrier_test_wait_parity(&bar[0], p & 1)) {
        if (polls++ == 0 && mode == 0) af_mbarrier_arrive(&bar[0]);
      }
      out[192 + p] = polls;
    } else {
      af_mbarrier_arrive(&bar[0]);
      af_mbarrier_wait_parity(&bar[0], p & 1);
    }
    out[3 * t + p] = val[slot + (t + 1) % 64];
  }
}

// setmaxnreg: warpgroup 0 gives registers away, warpgroup 1 takes them (FA3's producer /
// consumer split). mode 1: thread 5 requests a different count; 2: 100 (not a multiple of
// 8); 3: 264 (> 256); 4: .inc to fewer registers than held; 5: only warp 0 of warpgroup 0.
extern "C" __global__ void regs(int* out, int mode) {
  const int t = threadIdx.x, wg = t / 128;
  if (wg == 0) {
    if (mode == 5 && t >= 32) {
    } else if (mode == 1 && t == 5) {
      af_setmaxnreg_dec<32>();
    } else {
      af_setmaxnreg_dec<40>();
    }
    if (mode == 4) af_setmaxnreg_inc<32>();
  } else {
    if (mode == 2) af_setmaxnreg_inc<100>();
    else if (mode == 3) af_setmaxnreg_inc<264>();
    else af_setmaxnreg_inc<232>();
  }
  out[t] = wg;
}
