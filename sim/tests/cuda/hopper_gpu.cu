// A producer / consumer pipeline of the Hopper helpers, as an sm_90a attention kernel uses
// them: warpgroup 0 (producer) lowers its registers and loads a Q and a K tile (64 x 64
// f16, 128-byte swizzle) with TMA onto one mbarrier; warpgroup 1 (consumer) raises its
// registers, waits, and computes S = Q K^T with four wgmma k-steps from shared memory.
// Runs on the simulator (tests/hopper.rs) and compiles with NVRTC for sm_90a (HGMMA in the
// SASS). Launch: 1 block of 256 threads, 16400 bytes of dynamic shared memory.
// tmap_q / tmap_k: tensor maps of q and k ([rows][64] f16, box 64 x 64, swizzle 128B).
extern "C" __global__ void __launch_bounds__(256, 1)
    hopper_qk(const unsigned char* tmap_q, const unsigned char* tmap_k, const unsigned short* q,
              const unsigned short* k, float* s, int q_row, int k_row) {
  AF_DYNAMIC_SHARED(unsigned short, sm);
  AF_SHARED_VIEW(unsigned long long, bar, sm, 8192, 1);  // after the two 8 KiB tiles
  const int t = threadIdx.x;
  if (t == 0) af_mbarrier_init(&bar[0], 1);
  __syncthreads();
  if (t < 128) {
    af_setmaxnreg_dec<40>();
    if (t == 0) {
      af_mbarrier_arrive_expect_tx(&bar[0], 2 * 64 * 64 * 2);
      af_tma_load_2d(&sm[0], tmap_q, 0, q_row, &bar[0]);
      af_tma_load_2d(&sm[0] + 4096, tmap_k, 0, k_row, &bar[0]);
    }
  } else {
    af_setmaxnreg_inc<232>();
    af_mbarrier_wait_parity(&bar[0], 0);
    af_wgmma_acc<64> acc;
    af_wgmma_fence();
    for (int ks = 0; ks < 4; ks++) {
      // K-major, 128-byte swizzle: rows of 128 bytes, 8-row atoms 1024 bytes apart; k-step ks
      // starts 32 bytes into the row
      unsigned long long da = af_wgmma_desc(&sm[0] + 16 * ks, 16, 1024, 128);
      unsigned long long db = af_wgmma_desc(&sm[0] + 4096 + 16 * ks, 16, 1024, 128);
      af_wgmma_m64k16_f16_ss<64>(acc, da, db, ks > 0);
    }
    af_wgmma_commit_group();
    af_wgmma_wait_group<0>();
    const int u = t - 128, w = u / 32, g = (u % 32) / 4, c = u % 4;
    for (int i = 0; i < 32; i++) s[(16 * w + g + 8 * ((i >> 1) & 1)) * 64 + 8 * (i / 4) + 2 * c + (i & 1)] = acc[i];
  }
  (void)q;
  (void)k;
}

// Every non-wgmma helper once, so that ptxas sees each instruction form (NVRTC check only).
extern "C" __global__ void __launch_bounds__(128, 1)
    hopper_all_helpers(const unsigned char* tmap, const float* src, float* out, int c) {
  AF_DYNAMIC_SHARED(unsigned short, sm);  // one type per name on CUDA
  AF_SHARED_VIEW(unsigned long long, bar, sm, 8192, 1);
  if (threadIdx.x == 0) af_mbarrier_init(&bar[0], 1);
  __syncthreads();
  af_fence_proxy_async();
  if (threadIdx.x == 0) {
    af_mbarrier_expect_tx(&bar[0], 256);
    af_mbarrier_arrive_expect_tx(&bar[0], 5 * 256);
    af_bulk_load(&sm[0], src, 256, &bar[0]);
    af_tma_load_1d(&sm[0] + 128, tmap, c, &bar[0]);
    af_tma_load_2d(&sm[0] + 256, tmap, c, c, &bar[0]);
    af_tma_load_3d(&sm[0] + 384, tmap, c, c, c, &bar[0]);
    af_tma_load_4d(&sm[0] + 512, tmap, c, c, c, c, &bar[0]);
    af_tma_load_5d(&sm[0] + 640, tmap, c, c, c, c, c, &bar[0]);
  }
  while (!af_mbarrier_test_wait_parity(&bar[0], 0)) {
  }
  af_mbarrier_wait_parity(&bar[0], 0);
  if (!af_mbarrier_try_wait_parity(&bar[0], 0)) return;
  af_mbarrier_arrive(&bar[0]);
  af_setmaxnreg_dec<24>();
  af_setmaxnreg_inc<256>();
  out[threadIdx.x] = float(sm[threadIdx.x]);
}
