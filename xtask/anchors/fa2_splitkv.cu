// FlashAttention-2's split-KV decode kernel and its combine kernel, instantiated outside PyTorch
// for `cargo xtask anchors`.
//
// `flash_attn_with_kvcache` (flash_api.cpp `mha_fwd_kvcache`) always runs the split-KV kernel
// (`run_mha_fwd_splitkv_dispatch`) when it is given a block table (paged cache); for one
// decoded token (seqlen_q = 1) it clears is_causal and, with GQA and no window/ALiBi, swaps the
// query heads of a group into the seqlen_q dimension (`seqlenq_ngroups_swapped`): the 64-row M
// tile holds the group's heads. With cache_seqlens, `cu_seqlens_k` is set, so Is_even_MN is
// false; without new keys to append, Append_KV is false; with num_splits > 1, Split is true.
// Paged or not is a runtime branch of the same kernel (`params.block_table`). Traits of
// `run_mha_fwd_splitkv_dispatch` (kBlockM 64, 4 warps):
//   d64:  Flash_fwd_kernel_traits<64, 64, 256, 4, false, false, bf16>
//   d128: Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, bf16>
// The combine kernel: kBlockM = 8 (d64) / 4 (d128), Log_max_splits = 5 (up to 32 splits: what
// `num_splits_heuristic` picks for B = 1, Hq 32, Hkv 8, Sk 8192 on 132 SMs), Is_even_K.
// The wrappers are the launch template's (same names, `__grid_constant__` parameter, same body).
#include "namespace_config.h"
#include "flash.h"
#include "flash_fwd_kernel.h"

namespace FLASH_NAMESPACE {

template <typename Kernel_traits, bool Is_causal, bool Is_local, bool Has_alibi, bool Is_even_MN,
          bool Is_even_K, bool Is_softcap, bool Split, bool Append_KV>
__global__ void flash_fwd_splitkv_kernel(__grid_constant__ const Flash_fwd_params params) {
  FLASH_NAMESPACE::compute_attn_splitkv<Kernel_traits, Is_causal, Is_local, Has_alibi, Is_even_MN,
                                        Is_even_K, Is_softcap, Split, Append_KV>(params);
}

template <typename Kernel_traits, int kBlockM, int Log_max_splits, bool Is_even_K>
__global__ void flash_fwd_splitkv_combine_kernel(__grid_constant__ const Flash_fwd_params params) {
  static_assert(Log_max_splits >= 1);
  FLASH_NAMESPACE::combine_attn_seqk_parallel<Kernel_traits, kBlockM, Log_max_splits, Is_even_K>(params);
}

using bf16 = cutlass::bfloat16_t;
using SplitD64 = Flash_fwd_kernel_traits<64, 64, 256, 4, false, false, bf16>;
using SplitD128 = Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, bf16>;

template __global__ void flash_fwd_splitkv_kernel<SplitD64, false, false, false, false, true, false, true, false>(__grid_constant__ const Flash_fwd_params);
template __global__ void flash_fwd_splitkv_kernel<SplitD128, false, false, false, false, true, false, true, false>(__grid_constant__ const Flash_fwd_params);
template __global__ void flash_fwd_splitkv_combine_kernel<SplitD64, 8, 5, true>(__grid_constant__ const Flash_fwd_params);
template __global__ void flash_fwd_splitkv_combine_kernel<SplitD128, 4, 5, true>(__grid_constant__ const Flash_fwd_params);

}  // namespace FLASH_NAMESPACE
