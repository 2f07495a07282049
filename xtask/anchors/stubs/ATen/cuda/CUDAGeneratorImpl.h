// Minimal stand-in for PyTorch's ATen/cuda/CUDAGeneratorImpl.h, so FlashAttention-2's forward
// kernel compiles without PyTorch (`cargo xtask anchors`). Only `at::PhiloxCudaState` is used by
// the kernel (dropout seed/offset); its layout matches PyTorch's so `Flash_fwd_params` keeps the
// size and field offsets of a real build.
#pragma once
#include <cstdint>

namespace at {
struct PhiloxCudaState {
  PhiloxCudaState() = default;
  PhiloxCudaState(uint64_t seed, uint64_t offset) {
    seed_.val = seed;
    offset_.val = offset;
  }
  PhiloxCudaState(int64_t* seed, int64_t* offset_extragraph, uint32_t offset_intragraph) {
    seed_.ptr = seed;
    offset_.ptr = offset_extragraph;
    offset_intragraph_ = offset_intragraph;
    captured_ = true;
  }
  union Payload {
    uint64_t val;
    int64_t* ptr;
  };
  Payload seed_{};
  Payload offset_{};
  uint32_t offset_intragraph_ = 0;
  bool captured_ = false;
};
}  // namespace at
