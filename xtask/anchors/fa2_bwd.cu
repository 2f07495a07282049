// FlashAttention-2's backward dQ/dK/dV kernel, instantiated outside PyTorch for `cargo xtask anchors`.
//
// flash_bwd_launch_template.h defines the `__global__` wrapper but also pulls c10 and the host
// launch code; this unit defines the same wrapper (same name, `__grid_constant__` parameter, same
// body) over FA2's own `compute_dq_dk_dv_seqk_parallel` from flash_bwd_kernel.h, and instantiates
// it with the traits FA2's `run_mha_bwd_hdim{64,128}` pick for bf16 on sm80 / sm90 (opt-in shared
// memory >= 144 KB: A100, H100), without dropout:
//   d64:  Flash_bwd_kernel_traits<64, 128, 128, 8, 4, 4, 4, false, false, bf16>
//   d128: Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, false, false, bf16>
// with Is_even_MN = Is_even_K = true (seqlens multiples of the tile), no local/alibi/softcap;
// non-causal and causal. One block per key tile (kBlockN keys) loops over the query tiles:
// S, dP, dV, dK and dQ in one loop, dQ accumulated in f32 global memory with atomicAdd
// (FA2's `run_flash_bwd_seqk_parallel`; the dot(dO, O) pre-pass and the dQ conversion are
// separate kernels not compiled here).
#include "namespace_config.h"
#include "flash.h"
#include "flash_bwd_preprocess_kernel.h"  // dot_do_o, used by the main loop
#include "flash_bwd_kernel.h"

namespace FLASH_NAMESPACE {

template <typename Kernel_traits, bool Is_dropout, bool Is_causal, bool Is_local, bool Has_alibi,
          bool Is_even_MN, bool Is_even_K, bool Is_softcap>
__global__ void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel(__grid_constant__ const Flash_bwd_params params) {
  static_assert(!(Is_causal && Is_local));
  FLASH_NAMESPACE::compute_dq_dk_dv_seqk_parallel<Kernel_traits, Is_dropout, Is_causal, Is_local,
                                                  Has_alibi, Is_even_MN, Is_even_K, Is_softcap>(params);
}

using bf16 = cutlass::bfloat16_t;
using BwdD64 = Flash_bwd_kernel_traits<64, 128, 128, 8, 4, 4, 4, false, false, bf16>;
using BwdD128 = Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, false, false, bf16>;

template __global__ void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<BwdD64, false, false, false, false, true, true, false>(__grid_constant__ const Flash_bwd_params);
template __global__ void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<BwdD64, false, true, false, false, true, true, false>(__grid_constant__ const Flash_bwd_params);
template __global__ void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<BwdD128, false, false, false, false, true, true, false>(__grid_constant__ const Flash_bwd_params);
template __global__ void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<BwdD128, false, true, false, false, true, true, false>(__grid_constant__ const Flash_bwd_params);

}  // namespace FLASH_NAMESPACE
