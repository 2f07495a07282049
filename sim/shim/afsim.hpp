// afsim.hpp: attnforge CPU SIMT simulator shim (header-only, C++20).
//
// Compiled with g++ in front of an emitted `.cu`:
//   g++ -std=c++20 -O1 -fPIC -shared -x c++ -include afsim.hpp kernel.cu
// followed by one line `AFSIM_EXPORT_KERNEL(<name>)` appended to the source.
//
// Model: one fiber per CUDA thread (hand-written x86-64 context switch, ucontext
// elsewhere), every block on one OS worker thread (fibers never migrate), blocks in
// parallel across workers. Barriers and warp collectives are cooperative scheduling
// points; a block whose live fibers are all blocked is a deadlock, reported as a
// launch error. `__shared__` storage only through AF_SHARED / AF_DYNAMIC_SHARED, which
// give bounds-checked accessors over per-block storage poisoned at block start.
// See sim/README.md for the supported CUDA subset and the blind spots.
#pragma once
#ifndef ATTNFORGE_SIM
#define ATTNFORGE_SIM 1
#endif
#define AFSIM_VERSION 2

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <setjmp.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstdio>
#include <mutex>
#include <source_location>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) || defined(AFSIM_FORCE_UCONTEXT)
#define AFSIM_UCONTEXT 1
#include <ucontext.h>
#endif

// ---------------------------------------------------------------------------
// CUDA keywords
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Raw `__shared__` cannot be given per-block storage: use AF_SHARED / AF_DYNAMIC_SHARED.
#define __shared__ AFSIM_ERROR_use_AF_SHARED_or_AF_DYNAMIC_SHARED_instead_of___shared__

// ---------------------------------------------------------------------------
// C ABI (docs/conventions.md, "Simulator ABI")
// ---------------------------------------------------------------------------
extern "C" {
struct afsim_launch_cfg {
  unsigned grid[3];
  unsigned block[3];
  unsigned long long dynamic_smem_bytes;
  int schedule;  // 0 forward, 1 reverse, 2 random
  unsigned long long seed;
  int workers;  // 0 = available parallelism
  // Per kernel parameter (null: global accesses unchecked): the byte length of the buffer
  // a pointer parameter points at (ignored for scalars), and the parameter's name (or null).
  const unsigned long long* arg_bytes;
  const char* const* arg_names;
};
struct afsim_result {
  int status;  // 0 ok
  unsigned long long counters[8];
  char message[1024];
};
}

// ---------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---------------------------------------------------------------------------
// Simulator core
// ---------------------------------------------------------------------------
namespace afsim {

[[noreturn]] void fail(const std::string& msg);

// Wg: in a warpgroup-collective (wgmma, setmaxnreg); MBar: waiting on an mbarrier phase.
enum class St : unsigned char { Ready, Barrier, Warp, Done, Wg, MBar };

enum class WarpOp : unsigned char { None, Shfl, Ballot, Any, All, Sync, Mma16, MmaBf16, Ldm4, Ldm2, Ldm4T };

inline const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Shfl: return "__shfl*_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Any: return "__any_sync";
    case WarpOp::All: return "__all_sync";
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Mma16: return "af_mma_m16n8k16_f16";
    case WarpOp::MmaBf16: return "af_mma_m16n8k16_bf16";
    case WarpOp::Ldm4: return "af_ldmatrix_x4";
    case WarpOp::Ldm2: return "af_ldmatrix_x2";
    case WarpOp::Ldm4T: return "af_ldmatrix_x4_trans";
    default: return "?";
  }
}

struct CpAsync {
  unsigned char* dst;
  unsigned char data[16];
  long group;  // -1 = not yet committed
};

#ifdef AFSIM_UCONTEXT
using Ctx = ucontext_t;
#endif

struct Block;

struct Fiber {
#ifdef AFSIM_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  Block* blk = nullptr;
  uint3 tid{};
  unsigned linear = 0;
  St st = St::Ready;
  // warp collective: payload in, results out
  WarpOp op = WarpOp::None;
  unsigned mask = 0;
  uint32_t in[12] = {};
  uint32_t outv[4] = {};
  std::source_location site;
  std::vector<CpAsync> cp;
  long cp_next_group = 0;
  // Hopper state (see the "Hopper" section)
  void* wg_in = nullptr;            // this thread's operands of the pending warpgroup collective
  std::vector<void*> wgmma_pending;  // in-flight wgmma records (HWgmma*), oldest first
  long wgmma_next_group = 0;
  unsigned long long wgmma_fences = 1;
  size_t mbar_off = 0;  // St::MBar: the barrier's shared offset and the parity waited for
  unsigned mbar_parity = 0;
  bool spinning = false;  // yielded from a failed af_mbarrier_test_wait_parity
  unsigned char* stack_lo = nullptr;  // lowest usable byte (canary lives here)
};

struct Site {
  const void* key;
  size_t off;
  size_t bytes;
};

/// A pending warp collective: lanes in `expected` meet at the same op with the same mask.
/// Several may be pending in one warp (disjoint masks in divergent branches).
struct WarpGroup {
  unsigned arrived = 0;
  unsigned expected = 0;
  WarpOp op = WarpOp::None;
};
struct Warp {
  std::vector<WarpGroup> groups;
  uint16_t sync = 0;  // completed __syncwarp count (orders memory between its lanes)
};

/// Access record of a 2-byte granule of shared memory, for the race and poison checks.
/// Epochs are per-worker barrier intervals, increasing across blocks (no reset needed).
struct Rec {
  uint32_t wbar;   // epoch of the last checked write (< block_start: not written in this block)
  uint16_t wtid;   // its thread
  uint16_t wsync;  // the writer's warp __syncwarp count at the write
  uint32_t rbar;   // epoch of the last checked read
  uint16_t rtid;   // the reader: a thread id, kWarpReader | warp, or kMulti
  uint16_t rsync;  // the reader warp's __syncwarp count at the last read
};
inline constexpr uint16_t kMulti = 0xFFFF, kWarpReader = 0x8000;
/// Writer code of bulk/TMA copies (the async proxy): ordered by the mbarrier wait, not by
/// __syncthreads, so reading them is never reported as a race.
inline constexpr uint16_t kAsyncWriter = 0xFFFE;

struct Launch;

struct Block {
  Launch* L = nullptr;
  uint3 bid{};
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  unsigned at_barrier = 0;
  unsigned done = 0;
  std::source_location bar_site;
  bool failed = false;
  std::string err;
  // shared memory arena
  unsigned char* mem = nullptr;
  unsigned char* poison = nullptr;
  Rec* recs = nullptr;  // one per 2 bytes of the arena
  uint32_t epoch = 1;        // current barrier interval (per worker, never reset)
  uint32_t block_start = 1;  // first epoch of the running block
  size_t cap = 0;
  size_t dyn_bytes = 0;
  size_t static_top = 0;  // static allocations live after the dynamic region
  int dyn_kind = -1;
  std::vector<Site> sites;
  unsigned long long* counters = nullptr;
  // Hopper state: warpgroup meetings, mbarriers, bulk copies in flight (see "Hopper")
  struct WgMeet {
    unsigned arrived = 0;
    int op = -1;
    std::source_location site;
  };
  std::vector<WgMeet> wg;
  struct MBarrier {
    size_t off;
    unsigned expected, pending;
    long long tx;
    unsigned phase;
    std::source_location init_site;
  };
  std::vector<MBarrier> mbars;
  struct BulkCopy {
    size_t dst_off;
    std::vector<unsigned char> data;
    size_t bar_off;
    unsigned issuer;
  };
  std::vector<BulkCopy> bulk;
  std::vector<int> maxnreg;  // per warpgroup, 0 = not set
#ifndef AFSIM_UCONTEXT
  void* sched_sp = nullptr;
#else
  ucontext_t sched_uc;
#endif
};

/// A pointer parameter's buffer: global accesses through af_cp_async_16 / af_st_global_b32
/// must fall inside one of these; a fault near one is reported against it.
struct GlobalRegion {
  const unsigned char* base;
  size_t bytes;
  size_t elem;       // pointee size (1 for void)
  int index;         // parameter index
  const char* name;  // parameter name, or null
  std::string type;  // C++ parameter type
};

struct Launch {
  std::vector<GlobalRegion> regions;  // empty: global accesses unchecked
  dim3 grid, block;
  size_t dyn_bytes;
  int schedule;
  unsigned long long seed;
  void (*entry)(void*);
  void* arg;
  std::atomic<bool> abort{false};
  std::mutex mu;
  std::string err;
};

inline thread_local Fiber* tl_cur = nullptr;
inline thread_local Block* tl_blk = nullptr;

inline constexpr size_t kStack = 128 * 1024;
inline constexpr uint64_t kCanary = 0xAF51A5CA4A2AD0ULL;
inline constexpr size_t kSharedCap = 232448;  // 227 KiB opt-in limit of sm_90 (+ dynamic)

// --- context switch -------------------------------------------------------
#ifndef AFSIM_UCONTEXT
extern "C" void afsim_switch(void** save_sp, void* to_sp);
extern "C" void afsim_fiber_start();
asm(R"(
  .text
  .p2align 4
  .globl afsim_switch
  .hidden afsim_switch
  .type afsim_switch,@function
afsim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size afsim_switch,.-afsim_switch

  .p2align 4
  .globl afsim_fiber_start
  .hidden afsim_fiber_start
  .type afsim_fiber_start,@function
afsim_fiber_start:
  movq %rbx, %rdi
  callq *%r12
  ud2
  .size afsim_fiber_start,.-afsim_fiber_start
)");
#endif

void fiber_main(Fiber* f);

inline void to_sched(Fiber* f) {
  Block* b = f->blk;
#ifndef AFSIM_UCONTEXT
  afsim_switch(&f->sp, b->sched_sp);
#else
  swapcontext(&f->uc, &b->sched_uc);
#endif
  tl_cur = f;
  tl_blk = b;
}

inline void run_fiber(Block* b, Fiber* f) {
  tl_cur = f;
  tl_blk = b;
#ifndef AFSIM_UCONTEXT
  afsim_switch(&b->sched_sp, f->sp);
#else
  swapcontext(&b->sched_uc, &f->uc);
#endif
  tl_cur = nullptr;
  uint64_t c;
  memcpy(&c, f->stack_lo, 8);
  if (c != kCanary && !b->failed) {
    b->failed = true;
    b->err = "fiber stack overflow (more than 128 KiB of stack) in thread (" + std::to_string(f->tid.x) + "," +
             std::to_string(f->tid.y) + "," + std::to_string(f->tid.z) + ")";
  }
}

#ifdef AFSIM_UCONTEXT
inline void uc_entry(unsigned lo, unsigned hi) {
  fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

inline void init_fiber(Fiber* f, unsigned char* stack_lo, size_t size) {
  f->stack_lo = stack_lo;
  memcpy(stack_lo, &kCanary, 8);
#ifndef AFSIM_UCONTEXT
  uintptr_t top = (uintptr_t(stack_lo) + size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 64);
  uint32_t csr[2] = {0x1F80u, 0x037Fu};
  memcpy(&sp[0], csr, 8);
  sp[1] = 0;                                       // r15
  sp[2] = 0;                                       // r14
  sp[3] = 0;                                       // r13
  sp[4] = reinterpret_cast<uint64_t>(&fiber_main);  // r12
  sp[5] = reinterpret_cast<uint64_t>(f);           // rbx
  sp[6] = 0;                                       // rbp
  sp[7] = reinterpret_cast<uint64_t>(&afsim_fiber_start);
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = stack_lo;
  f->uc.uc_stack.ss_size = size;
  f->uc.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->uc, reinterpret_cast<void (*)()>(&uc_entry), 2, unsigned(p & 0xffffffffu), unsigned(p >> 32));
#endif
}

// --- helpers ---------------------------------------------------------------
inline std::string fmt_tid(uint3 t) {
  return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}
inline std::string fmt_site(const std::source_location& s) {
  return std::string(s.file_name()) + ":" + std::to_string(s.line()) + ":" + std::to_string(s.column());
}
inline std::string where() {
  Fiber* f = tl_cur;
  if (!f) return "outside a kernel thread";
  return "block " + fmt_tid(f->blk->bid) + " thread " + fmt_tid(f->tid);
}
inline std::string ranges(const std::vector<unsigned>& ids) {
  std::string s;
  size_t i = 0, n = 0;
  while (i < ids.size()) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
    if (!s.empty()) s += ",";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
    if (++n > 16) {
      s += ",...";
      break;
    }
  }
  return s;
}

[[noreturn]] inline void fail(const std::string& msg) {
  Fiber* f = tl_cur;
  if (!f) {
    std::fprintf(stderr, "afsim: fatal: %s\n", msg.c_str());
    std::abort();
  }
  Block* b = f->blk;
  if (!b->failed) {
    b->failed = true;
    b->err = msg + " [" + where() + "]";
  }
  f->st = St::Done;
  to_sched(f);
  __builtin_unreachable();
}

// --- global memory: pointer parameters' extents -----------------------------------------
/// `argument 1 `k` (const __half*, 2048 elements = 4096 bytes)`
inline std::string describe_region(const GlobalRegion& r) {
  std::string s = "argument " + std::to_string(r.index);
  if (r.name) s += std::string(" `") + r.name + "`";
  if (!r.base) return s + " (" + r.type + ", a null pointer)";
  return s + " (" + r.type + ", " + std::to_string(r.bytes / r.elem) + " elements = " + std::to_string(r.bytes) +
         " bytes)";
}
/// The region holding [a, a + n), else the nearest one (by distance to its byte range).
inline const GlobalRegion* find_region(const Launch* L, uintptr_t a, size_t n, bool* inside,
                                       unsigned long long* dist = nullptr) {
  const GlobalRegion* best = nullptr;
  unsigned long long best_d = ~0ull;
  *inside = false;
  if (dist) *dist = 0;
  for (auto& r : L->regions) {
    uintptr_t lo = reinterpret_cast<uintptr_t>(r.base), hi = lo + r.bytes;
    if (r.base && a >= lo && a + n <= hi && a + n >= a) {
      *inside = true;
      return &r;
    }
    unsigned long long d = a < lo ? lo - a : a >= hi ? a - hi + 1 : 0;
    if (d < best_d) best_d = d, best = &r;
  }
  if (dist) *dist = best_d;
  return best;
}
/// Bytes of inaccessible address space the launcher reserves on each side of every staged
/// buffer (GUARD_BYTES in sim/src/args.rs): a fault this close to a buffer is an
/// access out of its bounds; farther away, a wild pointer.
inline constexpr unsigned long long kGuardBytes = 1ull << 20;
inline bool near_region(const Launch* L, uintptr_t a) {
  bool inside = false;
  unsigned long long d = 0;
  return find_region(L, a, 1, &inside, &d) && d <= kGuardBytes;
}
/// `byte offset -4 (element -1) of argument 1 `k` (...)`, or the bare address.
inline std::string describe_global(const Launch* L, uintptr_t a, size_t n) {
  bool inside = false;
  const GlobalRegion* r = L ? find_region(L, a, n, &inside) : nullptr;
  char buf[64];
  if (!r) {
    snprintf(buf, sizeof buf, "address %p", reinterpret_cast<void*>(a));
    return std::string(buf) + " (no pointer argument to compare with)";
  }
  if (!r->base) {
    snprintf(buf, sizeof buf, "address %p", reinterpret_cast<void*>(a));
    return std::string(buf) + ", nearest to " + describe_region(*r);
  }
  long long off = (long long)(a - reinterpret_cast<uintptr_t>(r->base));
  long long el = off >= 0 ? off / (long long)r->elem : -((-off + (long long)r->elem - 1) / (long long)r->elem);
  std::string s = "byte offset " + std::to_string(off) + " (element " + std::to_string(el) + ") of " + describe_region(*r);
  if (off < 0) s += ", before its start";
  else if ((unsigned long long)off + n > r->bytes) s += ", past its end";
  return s;
}
/// A checked global access of `n` bytes at `p` needing `align`-byte alignment (`what`
/// names the wrapper and the direction). No-op when the launch registered no extents.
inline void check_global(const void* p, size_t n, size_t align, const char* what) {
  Block* b = tl_blk;
  if (!b || b->L->regions.empty()) {
    if (reinterpret_cast<uintptr_t>(p) & (align - 1))
      fail(std::string(what) + " a misaligned address (needs " + std::to_string(align) + "-byte alignment)");
    return;
  }
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  find_region(b->L, a, n, &inside);
  if (!inside)
    fail(std::string("out-of-bounds global access: ") + what + " " + std::to_string(n) + " bytes at " +
         describe_global(b->L, a, n));
  if (a & (align - 1))
    fail(std::string("misaligned global access: ") + what + " " + std::to_string(n) + " bytes at " +
         describe_global(b->L, a, n) + " (needs " + std::to_string(align) + "-byte alignment)");
}

inline std::string describe_reader(uint16_t c) {
  if (c == kMulti) return "several threads";
  if (c & kWarpReader) return "warp " + std::to_string(c & 0x7FFF) + " (af_ldmatrix or several lanes)";
  return "thread " + std::to_string(c);
}
[[noreturn]] inline void race(const std::string& msg) { fail(msg); }

inline uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
template <class T>
void shuffle(std::vector<T>& v, uint64_t& s) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix(s) % i]);
}

// --- shared memory ---------------------------------------------------------
template <class T>
struct poison_of {
  static void fill(unsigned char* p, size_t bytes) { memset(p, 0xCD, bytes); }
};
template <>
struct poison_of<float> {
  static void fill(unsigned char* p, size_t bytes) {
    const uint32_t v = 0x7FCDCDCDu;  // a quiet NaN no arithmetic produces
    for (size_t i = 0; i + 4 <= bytes; i += 4) memcpy(p + i, &v, 4);
    for (size_t i = bytes & ~size_t(3); i < bytes; i++) p[i] = 0xCD;
  }
};
inline void fill16(unsigned char* p, size_t bytes, uint16_t v) {
  for (size_t i = 0; i + 2 <= bytes; i += 2) memcpy(p + i, &v, 2);
  if (bytes & 1) p[bytes - 1] = 0xCD;
}

inline size_t off_of(Block* b, const void* p) { return size_t(static_cast<const unsigned char*>(p) - b->mem); }

/// Still-poisoned test: every byte equal to the poison image and never written (through a
/// checked access or a completed cp.async) in this block.
inline bool is_poisoned(Block* b, const void* p, size_t n) {
  size_t off = off_of(b, p);
  if (memcmp(b->mem + off, b->poison + off, n) != 0) return false;
  for (size_t g = off >> 1; g <= (off + n - 1) >> 1; g++)
    if (b->recs[g].wbar >= b->block_start) return false;
  return true;
}
inline void mark_unwritten(Block* b, const void* p, size_t n) {
  size_t off = off_of(b, p);
  for (size_t g = off >> 1; g <= (off + n - 1) >> 1; g++) b->recs[g].wbar = 0;
}
inline unsigned warp_of_code(uint16_t c) { return (c & kWarpReader) ? unsigned(c & 0x7FFFu) : unsigned(c) >> 5; }

/// Checked read of `n` bytes at `p` by thread `t` (as the whole warp for ldmatrix):
/// a value written by another thread since the last __syncthreads (and, for a thread of
/// the same warp, since the last __syncwarp) is a race.
inline void on_read(Block* b, const void* p, size_t n, unsigned t, bool warp_reader, const char* what, long long idx) {
  size_t off = off_of(b, p);
  unsigned w = t >> 5;
  uint16_t sync = b->warps[w].sync;
  uint16_t code = warp_reader ? uint16_t(kWarpReader | w) : uint16_t(t);
  for (size_t g = off >> 1; g <= (off + n - 1) >> 1; g++) {
    Rec& r = b->recs[g];
    if (r.wbar == b->epoch && r.wtid != t && r.wtid != kAsyncWriter && !((r.wtid >> 5) == w && r.wsync != sync)) {
      bool same_warp = (r.wtid >> 5) == w;
      race("race: thread " + std::to_string(t) + " reads " + what +
           (idx >= 0 ? "[" + std::to_string(idx) + "]" : std::string()) + " written by thread " +
           std::to_string(r.wtid) + " since the last __syncthreads" +
           (same_warp ? " and __syncwarp (missing __syncwarp or __syncthreads)" : " (missing __syncthreads)"));
    }
    if (r.rbar != b->epoch) {
      r.rbar = b->epoch;
      r.rtid = code;
    } else if (r.rtid != code) {
      r.rtid = (r.rtid != kMulti && warp_of_code(r.rtid) == w) ? uint16_t(kWarpReader | w) : kMulti;
    }
    r.rsync = sync;
  }
}

/// Checked write: overwriting a value another thread read since the last __syncthreads
/// (or, within a warp, since the last __syncwarp) is a race. `check` = false for the
/// completion of a cp.async (checked at issue).
inline void on_write(Block* b, const void* p, size_t n, unsigned t, bool check, const char* what, long long idx) {
  size_t off = off_of(b, p);
  unsigned w = t >> 5;
  uint16_t sync = b->warps[w].sync;
  for (size_t g = off >> 1; g <= (off + n - 1) >> 1; g++) {
    Rec& r = b->recs[g];
    if (check && r.rbar == b->epoch && r.rtid != t &&
        !(r.rtid != kMulti && warp_of_code(r.rtid) == w && r.rsync != sync)) {
      race("race: thread " + std::to_string(t) + " overwrites " + what +
           (idx >= 0 ? "[" + std::to_string(idx) + "]" : std::string()) + " read by " + describe_reader(r.rtid) +
           " since the last __syncthreads" +
           (r.rtid != kMulti && warp_of_code(r.rtid) == w ? " and __syncwarp (missing __syncwarp or __syncthreads)"
                                                           : " (missing __syncthreads)"));
    }
    r.wbar = b->epoch;
    r.wtid = uint16_t(t);
    r.wsync = sync;
  }
}
inline void mark_written(Block* b, const void* p, size_t n, unsigned t) {
  on_write(b, p, n, t, false, "", -1);
}
inline bool in_arena(Block* b, const void* p, size_t n) {
  auto a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(b->mem);
  return a >= lo && a + n <= lo + b->cap;
}

template <class T>
inline constexpr bool proxied = std::is_arithmetic_v<T>;

template <class T>
struct sref;

/// Bounds-checked accessor over a block's shared array (what AF_SHARED gives).
template <class T>
struct shared_array {
  T* p;
  size_t n;
  const char* name;
  Block* b;

  [[noreturn]] void oob(long long i) const {
    fail("shared-memory index " + std::to_string(i) + " out of bounds for " + name + "[" + std::to_string(n) +
         "]");
  }
  template <std::integral I>
  decltype(auto) operator[](I i) const {
    if (i < 0 || static_cast<unsigned long long>(i) >= n) oob(static_cast<long long>(i));
    if constexpr (proxied<T>)
      return sref<T>{p + i, this};
    else
      return static_cast<T&>(p[i]);
  }
  decltype(auto) operator*() const { return (*this)[0]; }
  operator T*() const { return p; }
  template <std::integral I>
  friend T* operator+(const shared_array& a, I i) {
    if (i < 0 || static_cast<unsigned long long>(i) > a.n) a.oob(static_cast<long long>(i));
    return a.p + i;
  }
  template <std::integral I>
  friend T* operator+(I i, const shared_array& a) {
    return a + i;
  }
};

/// Element reference: reads check for poison and races, writes record the writer.
template <class T>
struct sref {
  T* p;
  const shared_array<T>* a;
  T get() const {
    if (is_poisoned(a->b, p, sizeof(T)))
      fail(std::string("read of uninitialised shared memory ") + a->name + "[" + std::to_string(p - a->p) +
           "] (never written in this block, or a cp.async into it not yet waited for)");
    on_read(a->b, p, sizeof(T), tl_cur->linear, false, a->name, p - a->p);
    return *p;
  }
  void put(T v) const {
    on_write(a->b, p, sizeof(T), tl_cur->linear, true, a->name, p - a->p);
    *p = v;
  }
  operator T() const { return get(); }
  /// half/bf16 elements also read as float, like `float x = s_half[i];` on CUDA.
  template <class U = T>
    requires(!std::is_arithmetic_v<U>)
  operator float() const {
    return float(get());
  }
  T* operator&() const { return p; }
  const sref& operator=(T v) const {
    put(v);
    return *this;
  }
  const sref& operator=(const sref& o) const {
    put(o.get());
    return *this;
  }
#define AFSIM_CMP(op)                     \
  const sref& operator op##=(T v) const { \
    put(static_cast<T>(get() op v));      \
    return *this;                         \
  }
  AFSIM_CMP(+)
  AFSIM_CMP(-)
  AFSIM_CMP(*)
  AFSIM_CMP(/)
#undef AFSIM_CMP
  template <class U = T>
    requires std::integral<U>
  const sref& operator|=(T v) const {
    put(get() | v);
    return *this;
  }
  template <class U = T>
    requires std::integral<U>
  const sref& operator&=(T v) const {
    put(get() & v);
    return *this;
  }
  template <class U = T>
    requires std::integral<U>
  const sref& operator^=(T v) const {
    put(get() ^ v);
    return *this;
  }
  const sref& operator++() const {
    put(get() + 1);
    return *this;
  }
  const sref& operator--() const {
    put(get() - 1);
    return *this;
  }
  T operator++(int) const {
    T v = get();
    put(v + 1);
    return v;
  }
  T operator--(int) const {
    T v = get();
    put(v - 1);
    return v;
  }
};

template <class T>
void poison_fill(unsigned char* p, size_t bytes);

inline unsigned char* alloc_static(const void* key, size_t bytes, size_t align, void (*fill)(unsigned char*, size_t),
                                   const char* name) {
  Block* b = tl_blk;
  if (!b) fail(std::string("AF_SHARED ") + name + " used outside a kernel (declare it at function scope)");
  for (auto& s : b->sites)
    if (s.key == key) return b->mem + s.off;
  size_t off = (b->static_top + align - 1) & ~(align - 1);
  if (off + bytes > b->cap)
    fail(std::string("shared memory exhausted allocating ") + name + " (" + std::to_string(bytes) +
         " bytes; total static + dynamic limit " + std::to_string(b->cap) + " bytes)");
  b->static_top = off + bytes;
  b->sites.push_back({key, off, bytes});
  fill(b->poison + off, bytes);
  memcpy(b->mem + off, b->poison + off, bytes);
  mark_unwritten(b, b->mem + off, bytes);
  return b->mem + off;
}

template <class T>
shared_array<T> static_shared(const void* key, long long count, const char* name) {
  if (count <= 0) fail(std::string("AF_SHARED ") + name + " needs a positive count, got " + std::to_string(count));
  auto* p = alloc_static(key, size_t(count) * sizeof(T), std::max<size_t>(alignof(T), 16), &poison_fill<T>, name);
  return {reinterpret_cast<T*>(p), size_t(count), name, tl_blk};
}

template <class T, class U>
shared_array<T> shared_view(const shared_array<U>& base, long long offset, long long count, const char* name) {
  if (offset < 0 || count < 0 ||
      (unsigned long long)offset * sizeof(U) + (unsigned long long)count * sizeof(T) > base.n * sizeof(U))
    fail(std::string("AF_SHARED_VIEW ") + name + ": " + std::to_string(count) + " elements of " +
         std::to_string(sizeof(T)) + " bytes at element " + std::to_string(offset) + " of " + base.name + "[" +
         std::to_string(base.n) + "] do not fit (is the dynamic shared memory size large enough?)");
  auto* p = reinterpret_cast<unsigned char*>(base.p) + size_t(offset) * sizeof(U);
  if (reinterpret_cast<uintptr_t>(p) % alignof(T))
    fail(std::string("AF_SHARED_VIEW ") + name + " is not aligned to " + std::to_string(alignof(T)) + " bytes");
  return {reinterpret_cast<T*>(p), size_t(count), name, base.b};
}

template <class T>
shared_array<T> dynamic_shared(const char* name) {
  Block* b = tl_blk;
  if (!b) fail(std::string("AF_DYNAMIC_SHARED ") + name + " used outside a kernel");
  if (b->dyn_kind < 0) {
    // the first declaration in the block decides the poison pattern of the region
    b->dyn_kind = 1;
    poison_fill<T>(b->poison, b->dyn_bytes);
    memcpy(b->mem, b->poison, b->dyn_bytes);
  }
  return {reinterpret_cast<T*>(b->mem), b->dyn_bytes / sizeof(T), name, b};
}

// --- counters -----------------------------------------------------------------
inline void count(int c, unsigned long long n) {
  Block* b = tl_blk;
  if (!b) return;
  if (c < 0 || c >= 8) fail("AF_COUNT counter id " + std::to_string(c) + " out of range 0..7");
  b->counters[c] += n;
}

// --- barrier ----------------------------------------------------------------
inline void syncthreads(std::source_location loc) {
  Fiber* f = tl_cur;
  if (!f) fail("__syncthreads outside a kernel");
  Block* b = f->blk;
  if (b->at_barrier == 0) b->bar_site = loc;
  f->site = loc;
  f->st = St::Barrier;
  b->at_barrier++;
  if (b->at_barrier == b->nthreads) {
    // everyone arrived: same call site?
    for (auto& g : b->fibers)
      if (g.site.line() != b->bar_site.line() || g.site.column() != b->bar_site.column() ||
          strcmp(g.site.file_name(), b->bar_site.file_name()) != 0) {
        std::vector<unsigned> at_first, other;
        for (auto& h : b->fibers)
          (h.site.line() == b->bar_site.line() && h.site.column() == b->bar_site.column() ? at_first : other)
              .push_back(h.linear);
        fail("divergent __syncthreads in block " + fmt_tid(b->bid) + ": threads " + ranges(at_first) + " wait at " +
             fmt_site(b->bar_site) + ", threads " + ranges(other) + " at " + fmt_site(g.site));
      }
    b->at_barrier = 0;
    b->epoch++;
    for (auto& g : b->fibers) g.st = St::Ready;
  }
  // every scheduling point yields, so threads pass a barrier in schedule order
  to_sched(f);
}

// --- warp collectives ---------------------------------------------------------
void complete_warp(Block* b, unsigned w, const WarpGroup& G);

inline void warp_op(Fiber* f, WarpOp op, unsigned mask) {
  Block* b = f->blk;
  unsigned lane = f->linear & 31, w = f->linear >> 5;
  if (!(mask >> lane & 1u))
    fail(std::string(warp_op_name(op)) + " with mask 0x" + [&] {
      char s[16];
      snprintf(s, sizeof s, "%08x", mask);
      return std::string(s);
    }() + " that does not include the calling lane " + std::to_string(lane));
  // lanes beyond the block size do not exist
  unsigned nlanes = std::min(32u, b->nthreads - w * 32);
  unsigned valid = nlanes == 32 ? 0xffffffffu : ((1u << nlanes) - 1);
  if (mask & ~valid) {
    char s[96];
    snprintf(s, sizeof s, "%s mask 0x%08x names lanes that do not exist (warp %u has %u lanes)", warp_op_name(op),
             mask, w, nlanes);
    fail(s);
  }
  auto& gs = b->warps[w].groups;
  size_t gi = 0;
  while (gi < gs.size() && !(gs[gi].expected == mask && gs[gi].op == op)) gi++;
  if (gi == gs.size()) {
    // overlapping masks may still resolve (a full-warp __syncwarp waiting for lanes that
    // first finish a half-warp shuffle); a true mismatch shows up as a deadlock
    gs.push_back({0, mask, op});
  }
  f->op = op;
  f->mask = mask;
  f->st = St::Warp;
  gs[gi].arrived |= 1u << lane;
  if (gs[gi].arrived == gs[gi].expected) {
    WarpGroup G = gs[gi];
    gs.erase(gs.begin() + long(gi));
    complete_warp(b, w, G);
  }
  to_sched(f);
}

inline void site_only(Fiber* f, std::source_location loc) { f->site = loc; }

inline Fiber* cur(std::source_location loc) {
  Fiber* f = tl_cur;
  if (!f) fail("warp intrinsic outside a kernel");
  f->site = loc;
  return f;
}

// --- half / bfloat16 conversions --------------------------------------------
inline uint16_t f2h_rn(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520 -> inf
  if (ax >= 0x38800000u) {                                  // normal half
    uint32_t mant = ax + 0xfffu + ((ax >> 13) & 1u);
    return uint16_t(sign | ((mant - 0x38000000u) >> 13));
  }
  if (ax < 0x33000000u) return uint16_t(sign);  // < 2^-25: rounds to 0
  // subnormal half: value = m * 2^-24
  uint32_t e = ax >> 23;
  uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - e;  // 113 - e + 13
  uint32_t r = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (r & 1u))) r++;
  return uint16_t(sign | r);
}
inline float h2f(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0x1f)
    x = sign | 0x7f800000u | (m << 13);
  else if (e != 0)
    x = sign | ((e + 112) << 23) | (m << 13);
  else if (m == 0)
    x = sign;
  else {
    int s = std::countl_zero(m) - 21;  // normalise
    m = (m << s) & 0x3ffu;
    x = sign | ((113 - s) << 23) | (m << 13);
  }
  return std::bit_cast<float>(x);
}
inline uint16_t f2bf_rn(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf2f(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

}  // namespace afsim

// ---------------------------------------------------------------------------
// __half / __nv_bfloat16
// ---------------------------------------------------------------------------
struct __half_raw { unsigned short x; };
struct __align__(2) __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(afsim::f2h_rn(f)) {}
  __half(double f) : __x(afsim::f2h_rn(float(f))) {}
  __half(int i) : __x(afsim::f2h_rn(float(i))) {}
  __half(__half_raw r) : __x(r.x) {}
  operator float() const { return afsim::h2f(__x); }
  operator __half_raw() const { return {__x}; }
  __half& operator+=(__half o) { return *this = __half(float(*this) + float(o)); }
  __half& operator-=(__half o) { return *this = __half(float(*this) - float(o)); }
  __half& operator*=(__half o) { return *this = __half(float(*this) * float(o)); }
  __half& operator/=(__half o) { return *this = __half(float(*this) / float(o)); }
};
struct __nv_bfloat16_raw { unsigned short x; };
struct __align__(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(afsim::f2bf_rn(f)) {}
  __nv_bfloat16(double f) : __x(afsim::f2bf_rn(float(f))) {}
  __nv_bfloat16(int i) : __x(afsim::f2bf_rn(float(i))) {}
  __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
  operator float() const { return afsim::bf2f(__x); }
  operator __nv_bfloat16_raw() const { return {__x}; }
  __nv_bfloat16& operator+=(__nv_bfloat16 o) { return *this = __nv_bfloat16(float(*this) + float(o)); }
  __nv_bfloat16& operator-=(__nv_bfloat16 o) { return *this = __nv_bfloat16(float(*this) - float(o)); }
  __nv_bfloat16& operator*=(__nv_bfloat16 o) { return *this = __nv_bfloat16(float(*this) * float(o)); }
  __nv_bfloat16& operator/=(__nv_bfloat16 o) { return *this = __nv_bfloat16(float(*this) / float(o)); }
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __half half;
struct __align__(4) __half2 { __half x, y; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __nv_bfloat162 nv_bfloat162;
typedef __half2 half2;

#define AFSIM_HALF_OPS(H)                                                  \
  inline H operator+(H a, H b) { return H(float(a) + float(b)); }         \
  inline H operator-(H a, H b) { return H(float(a) - float(b)); }         \
  inline H operator*(H a, H b) { return H(float(a) * float(b)); }         \
  inline H operator/(H a, H b) { return H(float(a) / float(b)); }         \
  inline H operator-(H a) {                                               \
    H r;                                                                  \
    r.__x = a.__x ^ 0x8000u;                                              \
    return r;                                                             \
  }                                                                       \
  inline bool operator==(H a, H b) { return float(a) == float(b); }       \
  inline bool operator!=(H a, H b) { return float(a) != float(b); }       \
  inline bool operator<(H a, H b) { return float(a) < float(b); }         \
  inline bool operator>(H a, H b) { return float(a) > float(b); }         \
  inline bool operator<=(H a, H b) { return float(a) <= float(b); }       \
  inline bool operator>=(H a, H b) { return float(a) >= float(b); }
AFSIM_HALF_OPS(__half)
AFSIM_HALF_OPS(__nv_bfloat16)
#undef AFSIM_HALF_OPS

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return afsim::h2f(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return afsim::bf2f(h.__x); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf(float(a), float(b), float(c))); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return a - b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16(fmaf(float(a), float(b), float(c)));
}
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return {__half(a), __half(a)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __hadd2(__half2 a, __half2 b) { return {a.x + b.x, a.y + b.y}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {a.x * b.x, a.y * b.y}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return {__nv_bfloat16(a), __nv_bfloat16(a)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.x + b.x, a.y + b.y}; }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.x * b.x, a.y * b.y}; }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16(__nv_bfloat16_raw{u}); }

namespace afsim {
template <class T>
void poison_fill(unsigned char* p, size_t bytes) {
  if constexpr (std::is_same_v<T, float>)
    poison_of<float>::fill(p, bytes);
  else if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __half2>)
    fill16(p, bytes, 0x7DCDu);  // half NaN with a payload conversions never produce
  else if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __nv_bfloat162>)
    fill16(p, bytes, 0x7FCDu);  // bf16 NaN with a payload conversions never produce
  else
    memset(p, 0xCD, bytes);
}
template <>
inline constexpr bool proxied<__half> = true;
template <>
inline constexpr bool proxied<__nv_bfloat16> = true;
}  // namespace afsim

// ---------------------------------------------------------------------------
// Thread indexing, barriers, warp collectives
// ---------------------------------------------------------------------------
#define threadIdx (::afsim::tl_cur->tid)
#define blockIdx (::afsim::tl_cur->blk->bid)
#define blockDim (::afsim::tl_cur->blk->L->block)
#define gridDim (::afsim::tl_cur->blk->L->grid)
inline constexpr int warpSize = 32;

inline void __syncthreads(std::source_location loc = std::source_location::current()) { afsim::syncthreads(loc); }
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
  afsim::warp_op(afsim::cur(loc), afsim::WarpOp::Sync, mask);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace afsim {
enum ShflKind : uint32_t { kIdx = 0, kXor = 1, kUp = 2, kDown = 3 };

template <class T>
T shfl(unsigned mask, T v, int arg, int width, ShflKind kind, std::source_location loc) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move up to 8 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("__shfl*_sync width must be a power of two in 1..32, got " + std::to_string(width));
  Fiber* f = cur(loc);
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  f->in[0] = uint32_t(bits);
  f->in[1] = uint32_t(bits >> 32);
  f->in[2] = kind;
  f->in[3] = uint32_t(arg);
  f->in[4] = uint32_t(width);
  warp_op(f, WarpOp::Shfl, mask);
  if (f->outv[2]) fail("__shfl*_sync reads a lane that is not in the mask (undefined in CUDA)");
  bits = uint64_t(f->outv[0]) | (uint64_t(f->outv[1]) << 32);
  T r;
  memcpy(&r, &bits, sizeof(T));
  return r;
}

inline void complete_warp(Block* b, unsigned w, const WarpGroup& W) {
  Fiber* lanes = &b->fibers[w * 32];
  unsigned m = W.expected;
  auto in_mask = [&](unsigned l) { return l < 32 && (m >> l & 1u); };
  switch (W.op) {
    case WarpOp::Shfl:
      for (unsigned l = 0; l < 32; l++) {
        if (!in_mask(l)) continue;
        Fiber& f = lanes[l];
        int width = int(f.in[4]), arg = int(f.in[3]);
        int base = int(l) & ~(width - 1), src = int(l);
        switch (f.in[2]) {
          case kIdx: src = base + (arg & (width - 1)); break;
          case kXor: src = int(l) ^ arg; if (src >= base + width) src = int(l); break;
          case kUp: src = int(l) - arg; if (src < base) src = int(l); break;
          case kDown: src = int(l) + arg; if (src >= base + width) src = int(l); break;
        }
        if (src < 0 || src > 31 || !in_mask(unsigned(src))) {
          f.outv[2] = 1;
          continue;
        }
        f.outv[0] = lanes[src].in[0];
        f.outv[1] = lanes[src].in[1];
        f.outv[2] = 0;
      }
      break;
    case WarpOp::Ballot:
    case WarpOp::Any:
    case WarpOp::All: {
      unsigned ballot = 0;
      for (unsigned l = 0; l < 32; l++)
        if (in_mask(l) && lanes[l].in[0]) ballot |= 1u << l;
      uint32_t r = W.op == WarpOp::Ballot ? ballot : W.op == WarpOp::Any ? (ballot != 0) : (ballot == m);
      for (unsigned l = 0; l < 32; l++)
        if (in_mask(l)) lanes[l].outv[0] = r;
      break;
    }
    case WarpOp::Sync: b->warps[w].sync++; break;
    case WarpOp::Mma16:
    case WarpOp::MmaBf16: {
      // PTX ISA, mma.m16n8k16 .row.col, f16/bf16 inputs, f32 accumulators.
      // groupID = lane >> 2, tig = lane & 3. A 16x16 (row): a_i (i=0..7), reg i/2, half i%2:
      //   row = groupID + 8*((i>>1)&1), col = 2*tig + (i&1) + 8*(i>=4).
      // B 16x8 (col): b_i (i=0..3), reg i/2: k = 2*tig + (i&1) + 8*(i>=2), n = groupID.
      // C/D 16x8: c_i (i=0..3): row = groupID + 8*(i>=2), col = 2*tig + (i&1).
      bool bf = W.op == WarpOp::MmaBf16;
      auto cvt = [bf](uint16_t h) { return bf ? bf2f(h) : h2f(h); };
      float A[16][16], B[16][8];
      for (unsigned l = 0; l < 32; l++) {
        unsigned g = l >> 2, t = l & 3;
        const uint32_t* a = lanes[l].in;
        const uint32_t* bb = lanes[l].in + 4;
        for (unsigned i = 0; i < 8; i++) {
          uint16_t h = uint16_t(a[i / 2] >> (16 * (i & 1)));
          A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >= 4)] = cvt(h);
        }
        for (unsigned i = 0; i < 4; i++) {
          uint16_t h = uint16_t(bb[i / 2] >> (16 * (i & 1)));
          B[2 * t + (i & 1) + 8 * (i >= 2)][g] = cvt(h);
        }
      }
      for (unsigned l = 0; l < 32; l++) {
        unsigned g = l >> 2, t = l & 3;
        for (unsigned i = 0; i < 4; i++) {
          unsigned row = g + 8 * (i >= 2), col = 2 * t + (i & 1);
          float acc = std::bit_cast<float>(lanes[l].in[6 + i]);
          // products of f16/bf16 values are exact in f32; sum in k order (hardware order
          // differs: results may differ from the GPU in the last bits).
          for (unsigned k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
          lanes[l].outv[i] = std::bit_cast<uint32_t>(acc);
        }
      }
      break;
    }
    case WarpOp::Ldm4:
    case WarpOp::Ldm2:
    case WarpOp::Ldm4T: {
      // PTX ISA ldmatrix .m8n8 .b16: matrix q's 8 row addresses come from lanes 8q..8q+7;
      // lane l receives, per matrix q, row l/4 elements 2*(l%4), 2*(l%4)+1 (.trans: the
      // transposed matrix, i.e. elements [2*(l%4)][l/4], [2*(l%4)+1][l/4]).
      unsigned nm = W.op == WarpOp::Ldm2 ? 2 : 4;
      bool tr = W.op == WarpOp::Ldm4T;
      uint16_t M[4][8][8];
      for (unsigned q = 0; q < nm; q++)
        for (unsigned r = 0; r < 8; r++) {
          Fiber& src = lanes[q * 8 + r];
          auto* p = reinterpret_cast<const unsigned char*>(uintptr_t(src.in[0]) | (uintptr_t(src.in[1]) << 32));
          if (!in_arena(b, p, 16) || (reinterpret_cast<uintptr_t>(p) & 15)) {
            char s[200];
            snprintf(s, sizeof s,
                     "%s: lane %u row address %p is not a 16-byte aligned row inside this block's shared memory",
                     warp_op_name(W.op), q * 8 + r, static_cast<const void*>(p));
            tl_cur = &src;
            fail(s);
          }
          for (unsigned c = 0; c < 8; c++)
            if (is_poisoned(b, p + 2 * c, 2)) {
              tl_cur = &src;
              fail(std::string(warp_op_name(W.op)) +
                   " reads uninitialised shared memory (never written, or a cp.async not yet waited for)");
            }
          {
            Fiber* saved = tl_cur;
            tl_cur = &src;
            on_read(b, p, 16, src.linear, true, "shared memory row of af_ldmatrix", -1);
            tl_cur = saved;
          }
          memcpy(M[q][r], p, 16);
        }
      for (unsigned l = 0; l < 32; l++) {
        unsigned g = l >> 2, t = l & 3;
        for (unsigned q = 0; q < nm; q++) {
          uint16_t lo = tr ? M[q][2 * t][g] : M[q][g][2 * t];
          uint16_t hi = tr ? M[q][2 * t + 1][g] : M[q][g][2 * t + 1];
          lanes[l].outv[q] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
      }
      break;
    }
    default: break;
  }
  for (unsigned l = 0; l < 32; l++)
    if (in_mask(l)) lanes[l].st = St::Ready;
}
}  // namespace afsim

#define AFSIM_SHFL(NAME, KIND, ARG)                                                                              \
  template <class T>                                                                                             \
  inline T NAME(unsigned mask, T v, ARG, int width = 32,                                                         \
                std::source_location loc = std::source_location::current()) {                                    \
    return afsim::shfl<T>(mask, v, int(lane_arg), width, afsim::KIND, loc);                                      \
  }
AFSIM_SHFL(__shfl_sync, kIdx, int lane_arg)
AFSIM_SHFL(__shfl_xor_sync, kXor, int lane_arg)
AFSIM_SHFL(__shfl_up_sync, kUp, unsigned lane_arg)
AFSIM_SHFL(__shfl_down_sync, kDown, unsigned lane_arg)
#undef AFSIM_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  f->in[0] = pred != 0;
  afsim::warp_op(f, afsim::WarpOp::Ballot, mask);
  return f->outv[0];
}
inline int __any_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  f->in[0] = pred != 0;
  afsim::warp_op(f, afsim::WarpOp::Any, mask);
  return int(f->outv[0]);
}
inline int __all_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  f->in[0] = pred != 0;
  afsim::warp_op(f, afsim::WarpOp::All, mask);
  return int(f->outv[0]);
}
inline unsigned __activemask() { return 0xffffffffu; }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : std::countl_zero(unsigned(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(unsigned(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// ---------------------------------------------------------------------------
// PTX wrappers (emulation; the codegen prelude defines the real asm under __CUDA_ARCH__)
// ---------------------------------------------------------------------------
/// D = A * B + C, warp-collective over all 32 lanes. a[4], b[2]: packed f16 pairs
/// (low half = lower element index); c[4], d[4]: f32 (d may alias c).
inline void af_mma_m16n8k16_f16(float* d, const unsigned* a, const unsigned* b, const float* c,
                                std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  for (int i = 0; i < 4; i++) f->in[i] = a[i];
  f->in[4] = b[0];
  f->in[5] = b[1];
  for (int i = 0; i < 4; i++) f->in[6 + i] = std::bit_cast<uint32_t>(c[i]);
  afsim::warp_op(f, afsim::WarpOp::Mma16, 0xffffffffu);
  for (int i = 0; i < 4; i++) d[i] = std::bit_cast<float>(f->outv[i]);
}
/// As af_mma_m16n8k16_f16 with bf16 inputs.
inline void af_mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c,
                                 std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  for (int i = 0; i < 4; i++) f->in[i] = a[i];
  f->in[4] = b[0];
  f->in[5] = b[1];
  for (int i = 0; i < 4; i++) f->in[6 + i] = std::bit_cast<uint32_t>(c[i]);
  afsim::warp_op(f, afsim::WarpOp::MmaBf16, 0xffffffffu);
  for (int i = 0; i < 4; i++) d[i] = std::bit_cast<float>(f->outv[i]);
}
namespace afsim {
inline void ldmatrix(unsigned* r, const void* row, WarpOp op, unsigned n, std::source_location loc) {
  auto* f = cur(loc);
  auto p = reinterpret_cast<uintptr_t>(row);
  f->in[0] = uint32_t(p);
  f->in[1] = uint32_t(p >> 32);
  warp_op(f, op, 0xffffffffu);
  for (unsigned i = 0; i < n; i++) r[i] = f->outv[i];
}
}  // namespace afsim
/// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the row address of matrix l/8.
inline void af_ldmatrix_x4(unsigned* r, const void* smem_row,
                           std::source_location loc = std::source_location::current()) {
  afsim::ldmatrix(r, smem_row, afsim::WarpOp::Ldm4, 4, loc);
}
/// ldmatrix .x2: lanes 0..15 give row addresses (addresses of lanes 16..31 are ignored).
inline void af_ldmatrix_x2(unsigned* r, const void* smem_row,
                           std::source_location loc = std::source_location::current()) {
  afsim::ldmatrix(r, smem_row, afsim::WarpOp::Ldm2, 2, loc);
}
/// ldmatrix .x4 .trans.
inline void af_ldmatrix_x4_trans(unsigned* r, const void* smem_row,
                                 std::source_location loc = std::source_location::current()) {
  afsim::ldmatrix(r, smem_row, afsim::WarpOp::Ldm4T, 4, loc);
}
/// 32-bit store to global memory (a packed pair of 16-bit elements): misalignment is the
/// fault the GPU would raise.
inline void af_st_global_b32(void* gmem_dst, unsigned v) {
  afsim::check_global(gmem_dst, 4, 4, "af_st_global_b32 writes");
  memcpy(gmem_dst, &v, 4);
}
/// A kernel precondition: on violation the launch fails with `what` (the GPU traps).
inline void af_require(bool ok, const char* what) {
  if (!ok) afsim::fail(std::string("kernel precondition failed: ") + what);
}
/// cp.async.cg.shared.global 16 bytes: deferred until af_cp_async_wait; the destination
/// is re-poisoned at issue so that a read before the wait is reported.
inline void af_cp_async_16(void* smem_dst, const void* gmem_src) {
  afsim::Fiber* f = afsim::tl_cur;
  if (!f) afsim::fail("af_cp_async_16 outside a kernel");
  afsim::Block* b = f->blk;
  if (!afsim::in_arena(b, smem_dst, 16) || (reinterpret_cast<uintptr_t>(smem_dst) & 15))
    afsim::fail("af_cp_async_16: destination is not 16 bytes of this block's shared memory, 16-byte aligned");
  afsim::check_global(gmem_src, 16, 16, "af_cp_async_16 reads");
  afsim::CpAsync c;
  c.dst = static_cast<unsigned char*>(smem_dst);
  memcpy(c.data, gmem_src, 16);
  c.group = -1;
  size_t off = c.dst - b->mem;
  afsim::on_write(b, c.dst, 16, f->linear, true, "the af_cp_async_16 destination", -1);
  memcpy(b->mem + off, b->poison + off, 16);
  afsim::mark_unwritten(b, c.dst, 16);
  f->cp.push_back(c);
}
/// cp.async.commit_group: closes the current group of this thread's copies.
inline void af_cp_async_commit() {
  afsim::Fiber* f = afsim::tl_cur;
  if (!f) afsim::fail("af_cp_async_commit outside a kernel");
  bool any = false;
  for (auto& c : f->cp)
    if (c.group < 0) c.group = f->cp_next_group, any = true;
  (void)any;
  f->cp_next_group++;
}
/// cp.async.wait_group N: completes every committed group but the newest N.
template <int N>
inline void af_cp_async_wait() {
  static_assert(N >= 0, "af_cp_async_wait<N> needs N >= 0");
  afsim::Fiber* f = afsim::tl_cur;
  if (!f) afsim::fail("af_cp_async_wait outside a kernel");
  long limit = f->cp_next_group - N;  // groups < limit complete
  afsim::Block* b = f->blk;
  size_t k = 0;
  for (size_t i = 0; i < f->cp.size(); i++) {
    auto& c = f->cp[i];
    if (c.group >= 0 && c.group < limit) {
      memcpy(c.dst, c.data, 16);
      afsim::mark_written(b, c.dst, 16, f->linear);
    } else {
      f->cp[k++] = c;
    }
  }
  f->cp.resize(k);
}
/// cp.async.wait_all.
inline void af_cp_async_wait_all() {
  af_cp_async_commit();
  af_cp_async_wait<0>();
}

// ---------------------------------------------------------------------------
// Shared memory, counters
// ---------------------------------------------------------------------------
#define AF_SHARED(type, name, count)   \
  static const char afsim_site_##name = 0; \
  const ::afsim::shared_array<type> name = ::afsim::static_shared<type>(&afsim_site_##name, (count), #name)
/// Carves a typed, checked view out of a shared array (typically the dynamic region):
/// `count` elements of `type` starting at element `offset` of `base` (in base's elements).
/// On CUDA: `type* name = reinterpret_cast<type*>(&(base)[offset])`.
#define AF_SHARED_VIEW(type, name, base, offset, count) \
  const ::afsim::shared_array<type> name = ::afsim::shared_view<type>((base), (offset), (count), #name)
#define AF_DYNAMIC_SHARED(type, name) \
  const ::afsim::shared_array<type> name = ::afsim::dynamic_shared<type>(#name)

enum af_counter {
  AF_CTR_TILE_FULL = 0,
  AF_CTR_TILE_PARTIAL = 1,
  AF_CTR_MASK_EVAL = 2,
  AF_CTR_KEYS_GATHERED = 3,
  AF_CTR_SELECT_WORK = 4,
};
#define AF_COUNT(counter, n) ::afsim::count(int(counter), (unsigned long long)(n))

// ---------------------------------------------------------------------------
// Atomics
// ---------------------------------------------------------------------------
#define AFSIM_ATOMIC_RMW(NAME, T, EXPR)              \
  inline T NAME(T* addr, T val) {                    \
    std::atomic_ref<T> r(*addr);                     \
    T old = r.load(std::memory_order_relaxed);       \
    while (!r.compare_exchange_weak(old, (EXPR))) {} \
    return old;                                      \
  }
inline int atomicAdd(int* a, int v) { return std::atomic_ref<int>(*a).fetch_add(v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return std::atomic_ref<unsigned>(*a).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*a).fetch_add(v);
}
inline float atomicAdd(float* a, float v) { return std::atomic_ref<float>(*a).fetch_add(v); }
inline double atomicAdd(double* a, double v) { return std::atomic_ref<double>(*a).fetch_add(v); }
AFSIM_ATOMIC_RMW(atomicMax, int, std::max(old, val))
AFSIM_ATOMIC_RMW(atomicMax, unsigned, std::max(old, val))
AFSIM_ATOMIC_RMW(atomicMax, long long, std::max(old, val))
AFSIM_ATOMIC_RMW(atomicMax, unsigned long long, std::max(old, val))
AFSIM_ATOMIC_RMW(atomicMin, int, std::min(old, val))
AFSIM_ATOMIC_RMW(atomicMin, unsigned, std::min(old, val))
AFSIM_ATOMIC_RMW(atomicMin, long long, std::min(old, val))
AFSIM_ATOMIC_RMW(atomicMin, unsigned long long, std::min(old, val))
#undef AFSIM_ATOMIC_RMW
template <class T>
inline T afsim_cas(T* a, T cmp, T val) {
  std::atomic_ref<T> r(*a);
  r.compare_exchange_strong(cmp, val);
  return cmp;
}
inline int atomicCAS(int* a, int c, int v) { return afsim_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return afsim_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
  return afsim_cas(a, c, v);
}
inline int atomicExch(int* a, int v) { return std::atomic_ref<int>(*a).exchange(v); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return std::atomic_ref<unsigned>(*a).exchange(v); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*a).exchange(v);
}
inline float atomicExch(float* a, float v) { return std::atomic_ref<float>(*a).exchange(v); }

// ---------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
inline unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
inline unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---------------------------------------------------------------------------
// Hopper (sm_90a): wgmma, mbarriers, TMA / bulk copies, setmaxnreg.
// The CUDA side of these helpers (real inline PTX) is codegen/cuda/af_hopper.cuh; the
// signatures match. Comments cite the PTX ISA (8.x) by section title (section numbers move
// between versions; https://docs.nvidia.com/cuda/parallel-thread-execution/):
//   "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" (wgmma), with
//     "Matrix Descriptor Format", "Shared Memory Matrix Layout" (canonical layouts and
//     swizzling) and "Register Fragments" (m64nNk16 A and D fragments);
//   "Parallel Synchronization and Communication Instructions: mbarrier" (phases, tx-count);
//   "Data Movement and Conversion Instructions: cp.async.bulk.tensor" / "cp.async.bulk" and
//     "Tensors" (tensor maps, bounding box, out-of-bound fill, swizzle modes);
//   "Miscellaneous Instructions: setmaxnreg".
// ---------------------------------------------------------------------------
namespace afsim {

enum HopperOp : int { kOpWgmma = 0, kOpSetmaxnregInc = 1, kOpSetmaxnregDec = 2 };
inline const char* hopper_op_name(int op) {
  switch (op) {
    case kOpWgmma: return "af_wgmma (wgmma.mma_async)";
    case kOpSetmaxnregInc: return "af_setmaxnreg_inc (setmaxnreg.inc)";
    case kOpSetmaxnregDec: return "af_setmaxnreg_dec (setmaxnreg.dec)";
    default: return "?";
  }
}

/// Per-accumulator bookkeeping (simulator only): in-flight wgmma count, the fence count at
/// the thread's last access, the site of the newest in-flight wgmma, and the value the
/// in-flight chain will produce.
struct AccState {
  int inflight = 0;
  // a new accumulator counts as accessed now: the first wgmma on it needs a fence too
  unsigned long long accessed_at_fence = tl_cur ? tl_cur->wgmma_fences : 0;
  std::source_location issued_at;
};

/// One thread's operands of a wgmma (the warpgroup's are combined when all 128 arrive).
struct WgmmaIn {
  int n;           // N of m64nNk16
  bool bf16;       // element type of A and B
  bool a_regs;     // A from registers (else descriptor)
  bool b_mn;       // B MN-major (imm-trans-b = 1), else K-major
  uint64_t desc_a, desc_b;
  uint32_t a[4];
  int scale_d;
  float* acc;      // the accumulator registers (n/2 floats)
  float* shadow;   // value after the in-flight chain (n/2 floats)
  AccState* st;
  int setmaxnreg;  // setmaxnreg operand
};

struct HWgmma {
  AccState* st;
  float* acc;
  float* shadow;
  int n;
  long group;  // -1 = not yet committed
};

inline void hopper_reset(Fiber* f) {
  for (void* p : f->wgmma_pending) delete static_cast<HWgmma*>(p);
  f->wgmma_pending.clear();
  f->wgmma_next_group = 0;
  f->wgmma_fences = 1;
  f->wg_in = nullptr;
}

inline std::string hex64(uint64_t v) {
  char s[24];
  snprintf(s, sizeof s, "0x%016llx", (unsigned long long)v);
  return s;
}

/// Shared-window address (offset in this block's arena) of a pointer; the GPU's
/// __cvta_generic_to_shared.
inline uint32_t smem_addr(const void* p, const char* what) {
  Fiber* f = tl_cur;
  if (!f) fail(std::string(what) + " outside a kernel");
  if (!in_arena(f->blk, p, 1)) fail(std::string(what) + ": pointer is not in this block's shared memory");
  return uint32_t(off_of(f->blk, p));
}
/// The pointer at shared-window address `a` of this block (the inverse of smem_addr); an
/// address past the block's shared memory gives a pointer past it (the operation using it
/// reports the error).
inline void* smem_ptr(uint32_t a, const char* what) {
  Fiber* f = tl_cur;
  if (!f) fail(std::string(what) + " outside a kernel");
  return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(f->blk->mem) + a);
}
}  // namespace afsim
/// __cvta_generic_to_shared: the shared-window address of a pointer into this block's shared
/// memory (its byte offset in the block's arena).
inline unsigned af_smem_addr(const void* p) { return afsim::smem_addr(p, "af_smem_addr"); }
/// ldmatrix .x4 at a shared-window address (af_smem_addr).
inline void af_ldmatrix_x4_at(unsigned* r, unsigned smem_addr,
                              std::source_location loc = std::source_location::current()) {
  afsim::ldmatrix(r, afsim::smem_ptr(smem_addr, "af_ldmatrix_x4_at"), afsim::WarpOp::Ldm4, 4, loc);
}
/// ldmatrix .x4 .trans at a shared-window address (af_smem_addr).
inline void af_ldmatrix_x4_trans_at(unsigned* r, unsigned smem_addr,
                                    std::source_location loc = std::source_location::current()) {
  afsim::ldmatrix(r, afsim::smem_ptr(smem_addr, "af_ldmatrix_x4_trans_at"), afsim::WarpOp::Ldm4T, 4, loc);
}
/// cp.async 16 bytes to a shared-window address (af_smem_addr).
inline void af_cp_async_16_at(unsigned smem_dst, const void* gmem_src) {
  af_cp_async_16(afsim::smem_ptr(smem_dst, "af_cp_async_16_at"), gmem_src);
}
namespace afsim {

// --- warpgroup collectives ----------------------------------------------------
void complete_wg(Block* b, unsigned g, int op);

/// Every thread of the warpgroup (128 consecutive threads) meets at `op`; the last one to
/// arrive runs the operation for all.
inline void wg_op(Fiber* f, int op, WgmmaIn* in, std::source_location loc) {
  Block* b = f->blk;
  unsigned g = f->linear / 128;
  if ((g + 1) * 128 > b->nthreads)
    fail(std::string(hopper_op_name(op)) + " is warpgroup-wide but warpgroup " + std::to_string(g) +
         " is incomplete: the block has " + std::to_string(b->nthreads) +
         " threads; use a multiple of 128");
  auto& M = b->wg[g];
  if (M.arrived != 0 && M.op != op)
    fail(std::string(hopper_op_name(op)) + " at " + fmt_site(loc) + " while other threads of warpgroup " +
         std::to_string(g) + " wait in " + hopper_op_name(M.op) + " at " + fmt_site(M.site) +
         " (.sync.aligned: every thread of the warpgroup must execute the same instruction)");
  if (M.arrived == 0) {
    M.op = op;
    M.site = loc;
  }
  f->site = loc;
  f->wg_in = in;
  f->st = St::Wg;
  if (++M.arrived == 128) {
    M.arrived = 0;
    complete_wg(b, g, op);
    for (unsigned l = 0; l < 128; l++) b->fibers[g * 128 + l].st = St::Ready;
  }
  to_sched(f);
  f->wg_in = nullptr;
}

// --- wgmma --------------------------------------------------------------------
/// Byte offset (in the shared window) of element (row, k) of a K-major operand described by
/// `desc` (rows: M for A, N for B; k < 16). PTX ISA, "Matrix Descriptor Format":
/// bits 0-13 start address >> 4, 16-29 leading dimension byte offset >> 4, 32-45 stride
/// dimension byte offset >> 4, 49-51 base offset, 62-63 swizzle (0 none, 1 128B, 2 64B, 3 32B).
/// Canonical K-major layouts ("Shared Memory Matrix Layout"): core matrices of 8 rows x 16 bytes; without swizzle
/// element (r, k) is at start + (r/8)*SBO + (k/8)*LBO + (r%8)*16 + (k%8)*2; with a T-byte
/// swizzle the 8-row atom has T-byte rows: start + (r/8)*SBO + (r%8)*T + 2k, then address
/// bits [4, 4+log2(T/16)) are XORed with bits [7, 7+log2(T/16)) (the TMA swizzle pattern).
inline size_t desc_elem(uint64_t desc, unsigned r, unsigned k) {
  size_t start = size_t(desc & 0x3FFF) << 4;
  size_t lbo = size_t((desc >> 16) & 0x3FFF) << 4;
  size_t sbo = size_t((desc >> 32) & 0x3FFF) << 4;
  unsigned mode = unsigned(desc >> 62);
  if (mode == 0) return start + (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
  unsigned t = mode == 1 ? 128 : mode == 2 ? 64 : 32;
  size_t a = start + (r / 8) * sbo + (r % 8) * t + 2 * k;
  unsigned bits = mode == 1 ? 3 : mode == 2 ? 2 : 1;
  size_t mask = ((size_t(1) << bits) - 1) << 4;
  return a ^ ((a >> 3) & mask);
}

/// As desc_elem for an MN-major operand (imm-trans-b = 1), element (n, k). The canonical
/// MN-major layouts (PTX ISA "Shared Memory Matrix Layout"; CUTLASS cute/atom/mma_traits_sm90_gmma.hpp spells
/// them as layouts): without swizzle, core matrices of 8 k-rows x 8 contiguous MN elements:
/// start + (n%8)*2 + (n/8)*SBO + (k%8)*16 + (k/8)*LBO; with a T-byte swizzle, rows of T bytes
/// hold T/2 contiguous MN elements, one row per k: start + 2*(n%(T/2)) + (n/(T/2))*LBO +
/// (k%8)*T + (k/8)*SBO, then the same address-bit XOR. (The roles of LBO and SBO swap
/// between the unswizzled and swizzled MN-major layouts.)
inline size_t desc_elem_mn(uint64_t desc, unsigned n, unsigned k) {
  size_t start = size_t(desc & 0x3FFF) << 4;
  size_t lbo = size_t((desc >> 16) & 0x3FFF) << 4;
  size_t sbo = size_t((desc >> 32) & 0x3FFF) << 4;
  unsigned mode = unsigned(desc >> 62);
  if (mode == 0) return start + (n % 8) * 2 + (n / 8) * sbo + (k % 8) * 16 + (k / 8) * lbo;
  unsigned t = mode == 1 ? 128 : mode == 2 ? 64 : 32;
  size_t a = start + 2 * (n % (t / 2)) + (n / (t / 2)) * lbo + (k % 8) * t + (k / 8) * sbo;
  unsigned bits = mode == 1 ? 3 : mode == 2 ? 2 : 1;
  size_t mask = ((size_t(1) << bits) - 1) << 4;
  return a ^ ((a >> 3) & mask);
}

inline void check_desc(Block* b, uint64_t desc, const char* which, unsigned rows, unsigned lane, bool mn = false) {
  if ((desc >> 49) & 7) {
    tl_cur = &b->fibers[lane];
    fail(std::string("af_wgmma: matrix descriptor ") + which + " " + hex64(desc) +
         " has a nonzero matrix base offset (bits 49-51), which the simulator does not emulate; "
         "align swizzled tiles to the swizzle pattern (1024/512/256 bytes)");
  }
  for (unsigned r = 0; r < rows; r++)
    for (unsigned k = 0; k < 16; k++) {
      size_t off = mn ? desc_elem_mn(desc, r, k) : desc_elem(desc, r, k);
      if (off + 2 > b->cap) {
        tl_cur = &b->fibers[lane];
        fail(std::string("af_wgmma: matrix descriptor ") + which + " " + hex64(desc) + " addresses element (" +
             std::to_string(r) + "," + std::to_string(k) + ") at shared byte offset " + std::to_string(off) +
             ", outside this block's shared memory");
      }
      if (is_poisoned(b, b->mem + off, 2)) {
        tl_cur = &b->fibers[lane];
        fail(std::string("af_wgmma reads uninitialised shared memory: operand ") + which + " element (" +
             std::to_string(r) + "," + std::to_string(k) + ") at shared byte offset " + std::to_string(off) +
             " (never written, or a TMA/bulk copy whose mbarrier was not waited for)");
      }
    }
}

inline void run_wgmma(Block* b, unsigned g) {
  Fiber* lanes = &b->fibers[g * 128];
  WgmmaIn& i0 = *static_cast<WgmmaIn*>(lanes[0].wg_in);
  for (unsigned l = 1; l < 128; l++) {
    WgmmaIn& in = *static_cast<WgmmaIn*>(lanes[l].wg_in);
    const char* what = in.n != i0.n ? "N" : in.bf16 != i0.bf16 ? "element type" : in.a_regs != i0.a_regs ? "A source"
                       : in.b_mn != i0.b_mn ? "B major-ness"
                       : (!in.a_regs && in.desc_a != i0.desc_a) ? "descriptor A"
                       : in.desc_b != i0.desc_b ? "descriptor B" : in.scale_d != i0.scale_d ? "scale-d" : nullptr;
    if (what) {
      tl_cur = &lanes[l];
      fail(std::string("af_wgmma: ") + what + " differs between threads " + std::to_string(g * 128) + " and " +
           std::to_string(g * 128 + l) + " of warpgroup " + std::to_string(g) +
           " (wgmma operands other than registers must be warpgroup-uniform)");
    }
  }
  unsigned n = unsigned(i0.n);
  auto cvt = [&](uint16_t h) { return i0.bf16 ? bf2f(h) : h2f(h); };
  static thread_local float A[64][16], B[256][16];
  if (i0.a_regs) {
    // A fragment ("Register Fragments", m64nNk16 A in registers): warp w of the warpgroup holds rows
    // 16w..16w+15 in the mma.m16n8k16 A layout: a_i at row g + 8*((i>>1)&1), column
    // 2t + (i&1) + 8*(i>=4), g = lane/4, t = lane%4.
    for (unsigned l = 0; l < 128; l++) {
      auto& in = *static_cast<WgmmaIn*>(lanes[l].wg_in);
      unsigned w = l / 32, gg = (l % 32) / 4, t = l % 4;
      for (unsigned i = 0; i < 8; i++)
        A[16 * w + gg + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >= 4)] = cvt(uint16_t(in.a[i / 2] >> (16 * (i & 1))));
    }
  } else {
    check_desc(b, i0.desc_a, "A", 64, g * 128);
    for (unsigned r = 0; r < 64; r++)
      for (unsigned k = 0; k < 16; k++) {
        uint16_t h;
        memcpy(&h, b->mem + desc_elem(i0.desc_a, r, k), 2);
        A[r][k] = cvt(h);
      }
  }
  check_desc(b, i0.desc_b, "B", n, g * 128, i0.b_mn);
  for (unsigned c = 0; c < n; c++)
    for (unsigned k = 0; k < 16; k++) {
      uint16_t h;
      memcpy(&h, b->mem + (i0.b_mn ? desc_elem_mn(i0.desc_b, c, k) : desc_elem(i0.desc_b, c, k)), 2);
      B[c][k] = cvt(h);
    }
  // D fragment ("Register Fragments", m64nNk16 accumulator): thread l (warp w = l/32, g = lane/4,
  // t = lane%4) holds d_i, i < N/2, at row 16w + g + 8*((i>>1)&1), column 8*(i/4) + 2t + (i&1).
  for (unsigned l = 0; l < 128; l++) {
    auto& in = *static_cast<WgmmaIn*>(lanes[l].wg_in);
    unsigned w = l / 32, gg = (l % 32) / 4, t = l % 4;
    const float* src = in.st->inflight > 0 ? in.shadow : in.acc;
    for (unsigned i = 0; i < n / 2; i++) {
      unsigned row = 16 * w + gg + 8 * ((i >> 1) & 1), col = 8 * (i / 4) + 2 * t + (i & 1);
      float acc = in.scale_d ? src[i] : 0.0f;
      // products of f16/bf16 values are exact in f32; summed in k order (the tensor core's
      // order and rounding may differ in the last bits)
      for (unsigned k = 0; k < 16; k++) acc += A[row][k] * B[col][k];
      in.shadow[i] = acc;
    }
  }
  for (unsigned l = 0; l < 128; l++) {
    auto& in = *static_cast<WgmmaIn*>(lanes[l].wg_in);
    in.st->inflight++;
    in.st->issued_at = lanes[l].site;
    lanes[l].wgmma_pending.push_back(new HWgmma{in.st, in.acc, in.shadow, in.n, -1});
  }
}

inline void run_setmaxnreg(Block* b, unsigned g, bool inc) {
  Fiber* lanes = &b->fibers[g * 128];
  int v = static_cast<WgmmaIn*>(lanes[0].wg_in)->setmaxnreg;
  for (unsigned l = 1; l < 128; l++) {
    int u = static_cast<WgmmaIn*>(lanes[l].wg_in)->setmaxnreg;
    if (u != v) {
      tl_cur = &lanes[l];
      fail(std::string(hopper_op_name(inc ? kOpSetmaxnregInc : kOpSetmaxnregDec)) + ": thread " +
           std::to_string(g * 128 + l) + " requests " + std::to_string(u) + " registers, thread " +
           std::to_string(g * 128) + " " + std::to_string(v) + " (the count must be warpgroup-uniform)");
    }
  }
  int cur_n = b->maxnreg[g];
  if (cur_n && (inc ? v < cur_n : v > cur_n)) {
    tl_cur = &lanes[0];
    fail(std::string(hopper_op_name(inc ? kOpSetmaxnregInc : kOpSetmaxnregDec)) + " " + std::to_string(v) +
         " in warpgroup " + std::to_string(g) + " which holds " + std::to_string(cur_n) + " registers per thread (" +
         (inc ? ".inc must not lower" : ".dec must not raise") + " the count)");
  }
  b->maxnreg[g] = v;
}

inline void complete_wg(Block* b, unsigned g, int op) {
  Fiber* saved = tl_cur;
  if (op == kOpWgmma) run_wgmma(b, g);
  else run_setmaxnreg(b, g, op == kOpSetmaxnregInc);
  tl_cur = saved;
}

template <int N>
inline void wgmma(float* acc, float* shadow, AccState* st, bool bf16, bool a_regs, bool b_mn, uint64_t desc_a,
                  const unsigned* a, uint64_t desc_b, int scale_d, std::source_location loc) {
  static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma m64nNk16: N must be a multiple of 8 in 8..256");
  Fiber* f = cur(loc);
  if (st->accessed_at_fence >= f->wgmma_fences)
    fail("af_wgmma at " + fmt_site(loc) + " (warpgroup " + std::to_string(f->linear / 128) +
         ") uses accumulator registers this thread accessed after its last af_wgmma_fence: wgmma.fence.sync.aligned "
         "is required before a wgmma.mma_async whose accumulator (or A) registers were touched since (PTX ISA "
         "wgmma.fence)");
  WgmmaIn in{N, bf16, a_regs, b_mn, desc_a, desc_b, {0, 0, 0, 0}, scale_d, acc, shadow, st, 0};
  if (a_regs)
    for (int i = 0; i < 4; i++) in.a[i] = a[i];
  wg_op(f, kOpWgmma, &in, loc);
}

inline void acc_access(AccState* st, int i, int size) {
  Fiber* f = tl_cur;
  if (!f) return;
  if (i < 0 || i >= size)
    fail("accumulator register index " + std::to_string(i) + " out of range 0.." + std::to_string(size - 1));
  if (st->inflight > 0)
    fail("thread " + std::to_string(f->linear) + " (warpgroup " + std::to_string(f->linear / 128) +
         ") accesses accumulator register d[" + std::to_string(i) + "] of the wgmma.mma_async issued at " +
         fmt_site(st->issued_at) +
         " before af_wgmma_wait_group retired it (PTX ISA wgmma.wait_group: accessing the "
         "accumulator before the wait is undefined behavior)");
  st->accessed_at_fence = f->wgmma_fences;
}

// --- mbarrier -------------------------------------------------------------------
inline Block::MBarrier* find_mbar(Block* b, size_t off) {
  for (auto& m : b->mbars)
    if (m.off == off) return &m;
  return nullptr;
}
inline Block::MBarrier& mbar_of(const void* bar, const char* what) {
  Fiber* f = tl_cur;
  if (!f) fail(std::string(what) + " outside a kernel");
  Block* b = f->blk;
  if (!in_arena(b, bar, 8) || (reinterpret_cast<uintptr_t>(bar) & 7))
    fail(std::string(what) + ": the mbarrier must be an 8-byte aligned 64-bit object in this block's shared memory");
  auto* m = find_mbar(b, off_of(b, bar));
  if (!m)
    fail(std::string(what) + " on the mbarrier at shared byte offset " + std::to_string(off_of(b, bar)) +
         " before af_mbarrier_init initialised it");
  return *m;
}
inline std::string describe_mbar(const Block::MBarrier& m) {
  return "mbarrier at shared byte offset " + std::to_string(m.off) + " (initialised at " + fmt_site(m.init_site) +
         " with count " + std::to_string(m.expected) + ")";
}
/// The current phase completes when all arrivals and all expected transaction bytes are in
/// (PTX ISA mbarrier, "Contents of the mbarrier object", phase completion).
inline void mbar_maybe_complete(Block* b, Block::MBarrier& m) {
  if (m.pending != 0 || m.tx != 0) return;
  m.phase++;
  // a phase completion orders memory like a barrier for the race checker (mbarrier
  // pipelines have no __syncthreads between producer and consumer)
  b->epoch++;
  m.pending = m.expected;
  for (auto& f : b->fibers)
    if (f.st == St::MBar && f.mbar_off == m.off) f.st = St::Ready;
}
inline void mbar_arrive(Block::MBarrier& m, long long tx, const char* what) {
  Block* b = tl_cur->blk;
  if (m.pending == 0)
    fail(std::string(what) + " on the " + describe_mbar(m) + " whose current phase has no pending arrivals left");
  m.tx += tx;
  if (m.tx > (1 << 20) - 1)
    fail(std::string(what) + ": the tx-count of the " + describe_mbar(m) + " exceeds 2^20-1 bytes");
  m.pending--;
  mbar_maybe_complete(b, m);
}
/// Blocks until the phase with parity `parity` has completed (true at once if it has).
inline void mbar_wait(const void* bar, unsigned parity, const char* what, std::source_location loc) {
  Fiber* f = cur(loc);
  auto& m = mbar_of(bar, what);
  if ((m.phase & 1u) != (parity & 1u)) return;  // the phase with this parity is complete
  f->mbar_off = m.off;
  f->mbar_parity = parity & 1u;
  f->st = St::MBar;
  to_sched(f);
}

// --- bulk copies ------------------------------------------------------------------
/// Completes every bulk copy in flight: writes the data, completes the transaction bytes on
/// its mbarrier. Returns whether there was any.
inline bool deliver_bulk(Block* b) {
  if (b->bulk.empty()) return false;
  auto copies = std::move(b->bulk);
  b->bulk.clear();
  for (auto& c : copies) {
    memcpy(b->mem + c.dst_off, c.data.data(), c.data.size());
    for (size_t g = c.dst_off >> 1; g <= (c.dst_off + c.data.size() - 1) >> 1; g++) {
      b->recs[g].wbar = b->epoch;
      b->recs[g].wtid = kAsyncWriter;
      b->recs[g].wsync = 0;
    }
    auto* m = find_mbar(b, c.bar_off);
    if (m) {
      m->tx -= (long long)c.data.size();
      mbar_maybe_complete(b, *m);
    }
  }
  return true;
}
inline void bulk_issue(Block* b, Fiber* f, void* smem_dst, std::vector<unsigned char>&& data, void* bar,
                       const char* what) {
  auto& m = mbar_of(bar, what);
  if (!in_arena(b, smem_dst, data.size()))
    fail(std::string(what) + ": the destination (" + std::to_string(data.size()) +
         " bytes) is not inside this block's shared memory");
  size_t off = off_of(b, smem_dst);
  on_write(b, smem_dst, data.size(), f->linear, true, (std::string(what) + " destination").c_str(), -1);
  memcpy(b->mem + off, b->poison + off, data.size());
  mark_unwritten(b, smem_dst, data.size());
  b->bulk.push_back({off, std::move(data), m.off, f->linear});
}

// --- TMA tensor maps (written by attnforge_sim::tma::TensorMapSpec::encode_for_sim) -----------
/// Simulator layout of a tiled tensor map (little-endian, 256 bytes; the GPU's CUtensorMap
/// is opaque and built by cuTensorMapEncodeTiled from the same fields).
struct TensorMapSim {
  uint32_t magic;  // 'AFTM'
  uint32_t version;
  uint32_t rank;
  uint32_t elem_bytes;
  uint32_t arg_index;  // the kernel argument holding the tensor (the GPU map holds its address)
  uint32_t swizzle;    // 0, 32, 64, 128 bytes
  uint64_t byte_offset;  // of the tensor's first element inside that argument
  uint64_t dims[5];
  uint64_t strides[5];  // bytes; strides[0] = elem_bytes
  uint32_t box[5];
  uint32_t oob_fill;  // 0 = zeros
  uint32_t reserved[16];
};
static_assert(sizeof(TensorMapSim) == 200, "tensor map layout");
inline constexpr uint32_t kTmapMagic = 0x4D544641u;

inline size_t swizzle_off(size_t off, unsigned swz) {
  if (swz == 0) return off;
  unsigned bits = swz == 128 ? 3 : swz == 64 ? 2 : 1;
  size_t mask = ((size_t(1) << bits) - 1) << 4;
  return off ^ ((off >> 3) & mask);
}

/// cp.async.bulk.tensor.Nd.shared::cluster.global.mbarrier::complete_tx::bytes (tile mode):
/// the box at `coords` (elements, dimension 0 innermost) is written to shared memory in
/// row-major box order, swizzled on the shared address like wgmma descriptors; elements
/// outside the tensor are zeros; the full box byte count completes the mbarrier transaction.
inline void tma_load(void* smem_dst, const void* tmap, const int* coords, unsigned rank, void* bar,
                     std::source_location loc) {
  Fiber* f = cur(loc);
  Block* b = f->blk;
  std::string what = "af_tma_load_" + std::to_string(rank) + "d";
  TensorMapSim m;
  check_global(tmap, sizeof m, 8, (what + " reads its tensor map:").c_str());
  memcpy(&m, tmap, sizeof m);
  if (m.magic != kTmapMagic || m.version != 1)
    fail(what + ": the tensor map is not one written by attnforge_sim::tma::TensorMapSpec::encode_for_sim");
  if (m.rank != rank)
    fail(what + " with a tensor map of rank " + std::to_string(m.rank) + "; use af_tma_load_" +
         std::to_string(m.rank) + "d");
  const Launch* L = b->L;
  const GlobalRegion* R = nullptr;
  for (auto& r : L->regions)
    if (r.index == int(m.arg_index)) R = &r;
  if (!R || !R->base)
    fail(what + ": the tensor map names kernel argument " + std::to_string(m.arg_index) +
         ", which is not a non-null pointer argument of this launch");
  if ((reinterpret_cast<uintptr_t>(smem_dst) & 127) != 0)
    fail(what + ": the shared memory destination must be 128-byte aligned");
  size_t eb = m.elem_bytes, total = eb;
  for (unsigned d = 0; d < rank; d++) total *= m.box[d];
  std::vector<unsigned char> data(total, 0);
  std::vector<unsigned char> linear(total, 0);
  unsigned idx[5] = {0, 0, 0, 0, 0};
  size_t nelem = total / eb;
  for (size_t e = 0; e < nelem; e++) {
    bool inside = true;
    size_t goff = m.byte_offset;
    for (unsigned d = 0; d < rank; d++) {
      long long c = (long long)coords[d] + idx[d];
      if (c < 0 || (unsigned long long)c >= m.dims[d]) inside = false;
      else goff += size_t(c) * m.strides[d];
    }
    if (inside) {
      if (goff + eb > R->bytes)
        fail(what + ": element at byte offset " + std::to_string(goff) + " lies outside " + describe_region(*R) +
             " (the tensor map's dims/strides do not fit the buffer)");
      memcpy(&linear[e * eb], R->base + goff, eb);
    }
    for (unsigned d = 0; d < rank; d++) {
      if (++idx[d] < m.box[d]) break;
      idx[d] = 0;
    }
  }
  size_t base = off_of(b, smem_dst);
  if (!in_arena(b, smem_dst, total))
    fail(what + ": the " + std::to_string(total) + "-byte box does not fit in this block's shared memory");
  // swizzle on absolute shared addresses, in 16-byte chunks
  for (size_t o = 0; o < total; o += 16) {
    size_t so = swizzle_off(base + o, m.swizzle) - base;
    memcpy(&data[so], &linear[o], std::min<size_t>(16, total - o));
  }
  bulk_issue(b, f, smem_dst, std::move(data), bar, what.c_str());
}

inline std::string hopper_deadlock_report(Block* b) {
  std::string s;
  for (unsigned g = 0; g < b->wg.size(); g++) {
    auto& M = b->wg[g];
    if (!M.arrived) continue;
    std::vector<unsigned> in, out;
    for (unsigned l = 0; l < 128 && g * 128 + l < b->nthreads; l++)
      (b->fibers[g * 128 + l].st == St::Wg ? in : out).push_back(g * 128 + l);
    s += "threads " + ranges(in) + " of warpgroup " + std::to_string(g) + " wait in " + hopper_op_name(M.op) +
         " at " + fmt_site(M.site) + ", threads " + ranges(out) + " never arrive; ";
  }
  for (auto& m : b->mbars) {
    std::vector<unsigned> ids;
    for (auto& f : b->fibers)
      if ((f.st == St::MBar || (f.spinning && f.st == St::Ready)) && f.mbar_off == m.off) ids.push_back(f.linear);
    if (ids.empty()) continue;
    s += "threads " + ranges(ids) + " wait on the " + describe_mbar(m) + " for the phase with parity " +
         std::to_string(b->fibers[ids[0]].mbar_parity) + " at " + fmt_site(b->fibers[ids[0]].site) +
         ", which can never complete: " + std::to_string(m.pending) + " of " + std::to_string(m.expected) +
         " arrivals and " + std::to_string(m.tx) +
         " transaction bytes (expect-tx minus completed bulk-copy bytes) still pending, no bulk copy in flight; ";
  }
  return s;
}
}  // namespace afsim

/// The wgmma accumulator of m64nNk16 with f32 accumulation: N/2 floats per thread. Indexing
/// is checked: an access while a wgmma on it is in flight is an error, and an access marks
/// the registers as touched (the next wgmma on them needs af_wgmma_fence first).
template <int N>
struct af_wgmma_acc {
  static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma m64nNk16: N must be a multiple of 8 in 8..256");
  static constexpr int size = N / 2;
  float r[N / 2];
  float shadow[N / 2];
  afsim::AccState st;
  float& operator[](int i) {
    afsim::acc_access(&st, i, size);
    return r[i];
  }
  const float& operator[](int i) const {
    afsim::acc_access(const_cast<afsim::AccState*>(&st), i, size);
    return r[i];
  }
};

/// A wgmma matrix descriptor (PTX ISA "Matrix Descriptor Format") for a K-major tile at `smem`: `lbo_bytes`,
/// `sbo_bytes` as the ISA's leading/stride dimension byte offsets, `swizzle_bytes` 0, 32,
/// 64 or 128.
inline unsigned long long af_wgmma_desc(const void* smem, unsigned lbo_bytes, unsigned sbo_bytes, int swizzle_bytes) {
  unsigned a = afsim::smem_addr(smem, "af_wgmma_desc");
  unsigned long long mode = swizzle_bytes == 128 ? 1 : swizzle_bytes == 64 ? 2 : swizzle_bytes == 32 ? 3 : 0;
  if (swizzle_bytes != 0 && swizzle_bytes != 32 && swizzle_bytes != 64 && swizzle_bytes != 128)
    afsim::fail("af_wgmma_desc: swizzle_bytes must be 0, 32, 64 or 128, got " + std::to_string(swizzle_bytes));
  if (a >= (1u << 18)) afsim::fail("af_wgmma_desc: shared address beyond the descriptor's 18-bit range");
  return (unsigned long long)((a & 0x3FFFF) >> 4) | ((unsigned long long)((lbo_bytes & 0x3FFFF) >> 4) << 16) |
         ((unsigned long long)((sbo_bytes & 0x3FFFF) >> 4) << 32) | (mode << 62);
}
/// fence.proxy.async.shared::cta: makes this thread's generic-proxy shared memory writes
/// visible to the async proxy (wgmma operands, TMA stores). The simulator has one memory;
/// a no-op here.
inline void af_fence_proxy_async() {}
/// wgmma.fence.sync.aligned: orders this thread's register accesses before later wgmmas.
inline void af_wgmma_fence(std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  f->wgmma_fences++;
}
/// wgmma.commit_group.sync.aligned: closes the group of this thread's uncommitted wgmmas.
inline void af_wgmma_commit_group(std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  for (void* p : f->wgmma_pending) {
    auto* w = static_cast<afsim::HWgmma*>(p);
    if (w->group < 0) w->group = f->wgmma_next_group;
  }
  f->wgmma_next_group++;
}
/// wgmma.wait_group.sync.aligned N: retires all but the newest N committed groups; their
/// accumulators become readable.
template <int N>
inline void af_wgmma_wait_group(std::source_location loc = std::source_location::current()) {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group N: 0..7");
  auto* f = afsim::cur(loc);
  long limit = f->wgmma_next_group - N;
  size_t k = 0;
  for (size_t i = 0; i < f->wgmma_pending.size(); i++) {
    auto* w = static_cast<afsim::HWgmma*>(f->wgmma_pending[i]);
    if (w->group >= 0 && w->group < limit) {
      if (--w->st->inflight == 0) memcpy(w->acc, w->shadow, sizeof(float) * size_t(w->n / 2));
      delete w;
    } else {
      f->wgmma_pending[k++] = w;
    }
  }
  f->wgmma_pending.resize(k);
}

// _bmn: B is MN-major (imm-trans-b = 1: N contiguous, e.g. V row-major for P V).
#define AFSIM_WGMMA(TY, BF, SUF, BMN)                                                                             \
  template <int N>                                                                                                \
  inline void af_wgmma_m64k16_##TY##_ss##SUF(af_wgmma_acc<N>& d, unsigned long long desc_a,                      \
                                             unsigned long long desc_b, int scale_d,                              \
                                             std::source_location loc = std::source_location::current()) {       \
    afsim::wgmma<N>(d.r, d.shadow, &d.st, BF, false, BMN, desc_a, nullptr, desc_b, scale_d, loc);                 \
  }                                                                                                               \
  template <int N>                                                                                                \
  inline void af_wgmma_m64k16_##TY##_rs##SUF(af_wgmma_acc<N>& d, const unsigned* a, unsigned long long desc_b,    \
                                             int scale_d,                                                         \
                                             std::source_location loc = std::source_location::current()) {       \
    afsim::wgmma<N>(d.r, d.shadow, &d.st, BF, true, BMN, 0, a, desc_b, scale_d, loc);                             \
  }
AFSIM_WGMMA(f16, false, , false)
AFSIM_WGMMA(bf16, true, , false)
AFSIM_WGMMA(f16, false, _bmn, true)
AFSIM_WGMMA(bf16, true, _bmn, true)
#undef AFSIM_WGMMA

/// mbarrier.init.shared::cta.b64: `count` arrivals per phase.
inline void af_mbarrier_init(unsigned long long* bar, unsigned count,
                             std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  auto* b = f->blk;
  if (!afsim::in_arena(b, bar, 8) || (reinterpret_cast<uintptr_t>(bar) & 7))
    afsim::fail("af_mbarrier_init: the mbarrier must be an 8-byte aligned 64-bit object in shared memory");
  if (count < 1 || count > (1u << 20) - 1)
    afsim::fail("af_mbarrier_init: count " + std::to_string(count) + " outside 1..2^20-1");
  size_t off = afsim::off_of(b, bar);
  afsim::mark_written(b, bar, 8, f->linear);
  if (auto* m = afsim::find_mbar(b, off)) *m = {off, count, count, 0, 0, loc};
  else b->mbars.push_back({off, count, count, 0, 0, loc});
}
/// mbarrier.arrive.shared::cta.b64 (the state result is not modelled).
inline void af_mbarrier_arrive(unsigned long long* bar, std::source_location loc = std::source_location::current()) {
  afsim::cur(loc);
  afsim::mbar_arrive(afsim::mbar_of(bar, "af_mbarrier_arrive"), 0, "af_mbarrier_arrive");
}
/// mbarrier.arrive.expect_tx.shared::cta.b64: adds `bytes` to the phase's tx-count, then arrives.
inline void af_mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes,
                                         std::source_location loc = std::source_location::current()) {
  afsim::cur(loc);
  afsim::mbar_arrive(afsim::mbar_of(bar, "af_mbarrier_arrive_expect_tx"), (long long)bytes,
                     "af_mbarrier_arrive_expect_tx");
}
/// mbarrier.expect_tx.shared::cta.b64 (no arrival).
inline void af_mbarrier_expect_tx(unsigned long long* bar, unsigned bytes,
                                  std::source_location loc = std::source_location::current()) {
  afsim::cur(loc);
  auto& m = afsim::mbar_of(bar, "af_mbarrier_expect_tx");
  m.tx += (long long)bytes;
}
/// mbarrier.try_wait.parity: the simulator blocks until the phase completes (a legal
/// time-out choice), so it always returns true; a wait that can never complete is a deadlock.
inline bool af_mbarrier_try_wait_parity(unsigned long long* bar, unsigned parity,
                                        std::source_location loc = std::source_location::current()) {
  afsim::mbar_wait(bar, parity, "af_mbarrier_try_wait_parity", loc);
  return true;
}
/// mbarrier.test_wait.parity (non-blocking): false yields to the other threads first; a
/// polling loop that can never succeed is reported as a deadlock after 1000 rounds in which
/// every running thread only polled.
inline bool af_mbarrier_test_wait_parity(unsigned long long* bar, unsigned parity,
                                         std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  auto& m = afsim::mbar_of(bar, "af_mbarrier_test_wait_parity");
  if ((m.phase & 1u) != (parity & 1u)) return true;
  f->mbar_off = m.off;
  f->mbar_parity = parity & 1u;
  f->spinning = true;
  afsim::to_sched(f);
  f->spinning = false;
  return false;
}
/// Loops on try_wait.parity until the phase with `parity` has completed.
inline void af_mbarrier_wait_parity(unsigned long long* bar, unsigned parity,
                                    std::source_location loc = std::source_location::current()) {
  afsim::mbar_wait(bar, parity, "af_mbarrier_wait_parity", loc);
}
/// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes: `bytes` (multiple of 16)
/// from global to shared memory, both 16-byte aligned; completes `bytes` on `bar`.
inline void af_bulk_load(void* smem_dst, const void* gmem_src, unsigned bytes, unsigned long long* bar,
                         std::source_location loc = std::source_location::current()) {
  auto* f = afsim::cur(loc);
  if (bytes == 0 || bytes % 16 || (reinterpret_cast<uintptr_t>(smem_dst) & 15))
    afsim::fail("af_bulk_load: size " + std::to_string(bytes) +
                " must be a nonzero multiple of 16 and the destination 16-byte aligned");
  afsim::check_global(gmem_src, bytes, 16, "af_bulk_load reads");
  std::vector<unsigned char> data(bytes);
  memcpy(data.data(), gmem_src, bytes);
  afsim::bulk_issue(f->blk, f, smem_dst, std::move(data), bar, "af_bulk_load");
}
#define AFSIM_TMA(R, PARAMS, ...)                                                                      \
  inline void af_tma_load_##R##d(void* smem_dst, const void* tmap, PARAMS, unsigned long long* bar,   \
                                 std::source_location loc = std::source_location::current()) {        \
    const int c[] = {__VA_ARGS__};                                                                     \
    afsim::tma_load(smem_dst, tmap, c, R, bar, loc);                                                   \
  }
#define AFSIM_COMMA ,
AFSIM_TMA(1, int c0, c0)
AFSIM_TMA(2, int c0 AFSIM_COMMA int c1, c0, c1)
AFSIM_TMA(3, int c0 AFSIM_COMMA int c1 AFSIM_COMMA int c2, c0, c1, c2)
AFSIM_TMA(4, int c0 AFSIM_COMMA int c1 AFSIM_COMMA int c2 AFSIM_COMMA int c3, c0, c1, c2, c3)
AFSIM_TMA(5, int c0 AFSIM_COMMA int c1 AFSIM_COMMA int c2 AFSIM_COMMA int c3 AFSIM_COMMA int c4, c0, c1, c2, c3, c4)
#undef AFSIM_COMMA
#undef AFSIM_TMA

namespace afsim {
template <int N>
inline void setmaxnreg(bool inc, std::source_location loc) {
  Fiber* f = cur(loc);
  const char* name = inc ? "af_setmaxnreg_inc" : "af_setmaxnreg_dec";
  if (N < 24 || N > 256 || N % 8)
    fail(std::string(name) + "<" + std::to_string(N) +
         ">: the register count must be a multiple of 8 in 24..256 (PTX ISA setmaxnreg)");
  WgmmaIn in{};
  in.setmaxnreg = N;
  wg_op(f, inc ? kOpSetmaxnregInc : kOpSetmaxnregDec, &in, loc);
}
}  // namespace afsim
/// setmaxnreg.inc.sync.aligned.u32 N (warpgroup-wide, N multiple of 8 in 24..256).
template <int N>
inline void af_setmaxnreg_inc(std::source_location loc = std::source_location::current()) {
  afsim::setmaxnreg<N>(true, loc);
}
/// setmaxnreg.dec.sync.aligned.u32 N.
template <int N>
inline void af_setmaxnreg_dec(std::source_location loc = std::source_location::current()) {
  afsim::setmaxnreg<N>(false, loc);
}

// ---------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------
namespace afsim {

inline void fiber_main(Fiber* f) {
  tl_cur = f;
  tl_blk = f->blk;
  Launch* L = f->blk->L;
  L->entry(L->arg);
  f->st = St::Done;
  f->blk->done++;
  to_sched(f);
  __builtin_unreachable();
}

struct Stacks {
  unsigned char* base = nullptr;
  size_t n = 0, stride = 0;
  explicit Stacks(size_t count) : n(count) {
    size_t page = size_t(sysconf(_SC_PAGESIZE));
    stride = kStack + page;
    void* p = mmap(nullptr, stride * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      base = nullptr;
      return;
    }
    base = static_cast<unsigned char*>(p);
    for (size_t i = 0; i < n; i++) mprotect(base + i * stride, page, PROT_NONE);  // guard page below each stack
  }
  unsigned char* lo(size_t i) const { return base + i * stride + (stride - kStack); }
  ~Stacks() {
    if (base) munmap(base, stride * n);
  }
  Stacks(const Stacks&) = delete;
  Stacks& operator=(const Stacks&) = delete;
};

inline std::string deadlock_report(Block* b) {
  std::string s = "deadlock in block " + fmt_tid(b->bid) + ": ";
  std::vector<unsigned> bar, done;
  for (auto& f : b->fibers) {
    if (f.st == St::Barrier) bar.push_back(f.linear);
    if (f.st == St::Done) done.push_back(f.linear);
  }
  if (!bar.empty()) {
    // group by site
    std::vector<bool> seen(b->fibers.size());
    for (auto& f : b->fibers) {
      if (f.st != St::Barrier || seen[f.linear]) continue;
      std::vector<unsigned> ids;
      for (auto& g : b->fibers)
        if (g.st == St::Barrier && g.site.line() == f.site.line() && g.site.column() == f.site.column()) {
          ids.push_back(g.linear);
          seen[g.linear] = true;
        }
      s += "threads " + ranges(ids) + " wait at __syncthreads " + fmt_site(f.site) + "; ";
    }
  }
  for (unsigned w = 0; w < b->warps.size(); w++)
    for (auto& W : b->warps[w].groups) {
    char buf[200];
    std::vector<unsigned> ids;
    for (unsigned l = 0; l < 32; l++)
      if (W.arrived >> l & 1u) ids.push_back(w * 32 + l);
    snprintf(buf, sizeof buf, "threads %s wait in %s (mask 0x%08x) at %s, lanes 0x%08x never arrive; ", ranges(ids).c_str(),
             warp_op_name(W.op), W.expected, fmt_site(b->fibers[ids[0]].site).c_str(), W.expected & ~W.arrived);
    s += buf;
  }
  s += hopper_deadlock_report(b);
  if (!done.empty()) s += "threads " + ranges(done) + " have exited (a barrier needs every thread of the block)";
  return s;
}

inline void run_block(Launch* L, Block& b, Stacks& st, uint64_t rng) {
  unsigned n = b.nthreads;
  b.failed = false;
  b.err.clear();
  b.at_barrier = 0;
  b.done = 0;
  b.static_top = (b.dyn_bytes + 15) & ~size_t(15);
  b.dyn_kind = -1;
  b.sites.clear();
  // poison the dynamic region with 0xCD until a declaration gives it a type
  memset(b.poison, 0xCD, b.dyn_bytes);
  memcpy(b.mem, b.poison, b.dyn_bytes);
  b.epoch++;
  b.block_start = b.epoch;
  for (auto& w : b.warps) w.groups.clear();
  b.wg.assign((n + 127) / 128, Block::WgMeet{});
  b.mbars.clear();
  b.bulk.clear();
  b.maxnreg.assign((n + 127) / 128, 0);
  for (unsigned i = 0; i < n; i++) {
    Fiber& f = b.fibers[i];
    f.blk = &b;
    f.linear = i;
    f.tid = {i % L->block.x, (i / L->block.x) % L->block.y, i / (L->block.x * L->block.y)};
    f.st = St::Ready;
    f.op = WarpOp::None;
    f.cp.clear();
    f.cp_next_group = 0;
    hopper_reset(&f);
    f.spinning = false;
    init_fiber(&f, st.lo(i), kStack);
  }
  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; i++) order[i] = L->schedule == 1 ? n - 1 - i : i;
  unsigned polling_rounds = 0;
  while (true) {
    if (L->schedule == 2) shuffle(order, rng);
    bool ran = false, progress = false;
    for (unsigned k = 0; k < n && !b.failed; k++) {
      Fiber& f = b.fibers[order[k]];
      if (f.st != St::Ready) continue;
      ran = true;
      run_fiber(&b, &f);
      if (!f.spinning) progress = true;
    }
    if (b.failed) return;
    if (b.done == n) return;
    // every running thread only polled an mbarrier (af_mbarrier_test_wait_parity)
    if (ran && !progress && !deliver_bulk(&b) && ++polling_rounds > 1000) ran = false;
    if (progress) polling_rounds = 0;
    if (!ran) {
      // bulk copies complete when nothing else can run: a consumer that reads before its
      // mbarrier wait sees the poisoned destination
      if (deliver_bulk(&b)) continue;
      b.failed = true;
      b.err = deadlock_report(&b);
      return;
    }
    if (L->abort.load(std::memory_order_relaxed)) return;
  }
}

// --- stack overflow: a fault in a guard page fails the block instead of the process ----
struct Recover {
  sigjmp_buf jb;
  const Stacks* st = nullptr;
  Fiber* culprit = nullptr;
  void* addr = nullptr;
  int sig = 0;
  bool guard = false;
  int write = -1;  // 1 write, 0 read, -1 unknown
};
inline thread_local Recover* tl_recover = nullptr;
inline struct sigaction g_old_segv, g_old_bus, g_old_fpe;

inline void on_fault(int sig, siginfo_t* si, void* uc) {
  Recover* r = tl_recover;
  if (r && r->st) {
    auto a = static_cast<unsigned char*>(si->si_addr);
    const Stacks* st = r->st;
    size_t page = st->stride - kStack;
    bool guard = sig != SIGFPE && a >= st->base && a < st->base + st->stride * st->n &&
                 size_t(a - st->base) % st->stride < page;
    // a guard-page hit, or any fault while a kernel thread runs: the fiber is abandoned
    if (guard || tl_cur) {
      r->culprit = tl_cur;
      r->addr = si->si_addr;
      r->sig = sig;
      r->guard = guard;
#if defined(__x86_64__) && defined(REG_ERR)
      // page-fault error code: bit 1 set for a write
      r->write = (static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#endif
      tl_recover = nullptr;
      siglongjmp(r->jb, 1);
    }
  }
  // not ours: hand over to the previous handler (Rust's stack-overflow handler, ...)
  struct sigaction* old = sig == SIGSEGV ? &g_old_segv : sig == SIGBUS ? &g_old_bus : &g_old_fpe;
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction) return old->sa_sigaction(sig, si, uc);
  } else if (old->sa_handler == SIG_IGN) {
    return;
  } else if (old->sa_handler != SIG_DFL) {
    return old->sa_handler(sig);
  }
  signal(sig, SIG_DFL);  // returning re-executes the fault with the default action
}

inline void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGFPE, &sa, &g_old_fpe);
  });
}

/// An alternate signal stack for this thread while it runs fibers (restored afterwards).
struct AltStack {
  std::vector<unsigned char> mem;
  stack_t old{};
  bool set = false;
  AltStack() : mem(size_t(64) * 1024) {
    stack_t ss{};
    ss.ss_sp = mem.data();
    ss.ss_size = mem.size();
    ss.ss_flags = 0;
    set = sigaltstack(&ss, &old) == 0;
  }
  ~AltStack() {
    if (!set) return;
    if (old.ss_flags & SS_DISABLE) {
      stack_t ss{};
      ss.ss_flags = SS_DISABLE;
      sigaltstack(&ss, nullptr);
    } else {
      sigaltstack(&old, nullptr);
    }
  }
  AltStack(const AltStack&) = delete;
  AltStack& operator=(const AltStack&) = delete;
};

/// run_block with guard-page faults turned into a block error.
inline void guarded_run_block(Launch* L, Block& b, Stacks& st, uint64_t rng) {
  Recover rec;
  rec.st = &st;
  if (sigsetjmp(rec.jb, 1)) {
    tl_cur = nullptr;
    b.failed = true;
    char buf[160];
    if (rec.guard)
      b.err = "fiber stack overflow (a thread used more than 128 KiB of stack: large local arrays or recursion)";
    else if (rec.sig == SIGFPE)
      b.err = "arithmetic exception (SIGFPE: integer division by zero or overflow) in kernel code";
    else if (near_region(L, reinterpret_cast<uintptr_t>(rec.addr))) {
      // buffers are staged between inaccessible guard regions, the end flush against one
      b.err = std::string("out-of-bounds global ") + (rec.write == 1 ? "write" : rec.write == 0 ? "read" : "access") +
              " (" + (rec.sig == SIGBUS ? "SIGBUS" : "SIGSEGV") + ") at " +
              describe_global(L, reinterpret_cast<uintptr_t>(rec.addr), 1);
    } else {
      snprintf(buf, sizeof buf, "invalid memory access at %p (%s) in kernel code: a global pointer or index out of range?",
               rec.addr, rec.sig == SIGBUS ? "SIGBUS" : "SIGSEGV");
      b.err = buf;
    }
    if (rec.culprit) b.err += " [block " + fmt_tid(b.bid) + " thread " + fmt_tid(rec.culprit->tid) + "]";
    return;
  }
  tl_recover = &rec;
  run_block(L, b, st, rng);
  tl_recover = nullptr;
}

inline void worker(Launch* L, const std::vector<unsigned>* order, std::atomic<size_t>* next,
                   unsigned long long* counters) {
  unsigned n = L->block.x * L->block.y * L->block.z;
  Stacks st(n);
  if (!st.base) {
    std::lock_guard<std::mutex> g(L->mu);
    if (L->err.empty()) L->err = "could not map fiber stacks";
    L->abort = true;
    return;
  }
  AltStack alt;
  Block b;
  b.L = L;
  b.nthreads = n;
  b.fibers.resize(n);
  b.warps.resize((n + 31) / 32);
  b.dyn_bytes = L->dyn_bytes;
  b.cap = ((L->dyn_bytes + 15) & ~size_t(15)) + kSharedCap;
  std::vector<unsigned char> mem(b.cap + 1024), poison(b.cap);
  std::vector<Rec> recs(b.cap / 2 + 1, Rec{0, 0, 0, 0, 0, 0});
  // 1024-byte aligned like the GPU's shared window, so swizzle patterns (which XOR address
  // bits) agree between TMA and wgmma descriptors
  b.mem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(mem.data()) + 1023) & ~uintptr_t(1023));
  b.poison = poison.data();
  b.recs = recs.data();
  b.counters = counters;
  unsigned gx = L->grid.x, gy = L->grid.y;
  while (!L->abort.load(std::memory_order_relaxed)) {
    size_t k = next->fetch_add(1);
    if (k >= order->size()) break;
    unsigned id = (*order)[k];
    b.bid = {id % gx, (id / gx) % gy, id / (gx * gy)};
    uint64_t rng = L->seed ^ (0xD1B54A32D192ED03ULL * (id + 1));
    guarded_run_block(L, b, st, rng);
    if (b.failed) {
      std::lock_guard<std::mutex> g(L->mu);
      if (L->err.empty()) L->err = b.err;
      L->abort = true;
    }
  }
}

template <class... A>
struct Args {
  void (*k)(A...);
  std::tuple<std::decay_t<A>...> vals;
  static void call(void* p) {
    auto* self = static_cast<Args*>(p);
    std::apply(self->k, self->vals);
  }
};

template <class... A, size_t... I>
Args<A...> make_args(void (*k)(A...), void** params, std::index_sequence<I...>) {
  return Args<A...>{k, std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(params[I])...)};
}

inline void set_msg(afsim_result* out, const std::string& m) {
  size_t n = std::min(m.size(), sizeof(out->message) - 1);
  memcpy(out->message, m.data(), n);
  out->message[n] = 0;
}

template <class... A>
void register_regions(void (*)(A...), void** params, const afsim_launch_cfg* cfg, Launch& L);

template <class... A>
int launch(void (*k)(A...), void** params, const afsim_launch_cfg* cfg, afsim_result* out) {
  memset(out, 0, sizeof *out);
  auto bad = [&](const std::string& m) {
    out->status = 2;
    set_msg(out, m);
    return 2;
  };
  if (sizeof...(A) > 0 && !params) return bad("params is null but the kernel takes arguments");
  for (int i = 0; i < 3; i++) {
    if (cfg->grid[i] == 0) return bad("grid dimension " + std::to_string(i) + " is 0; every dimension must be >= 1");
    if (cfg->block[i] == 0)
      return bad("block dimension " + std::to_string(i) + " is 0; every dimension must be >= 1");
  }
  unsigned long long nthreads = 1ull * cfg->block[0] * cfg->block[1] * cfg->block[2];
  if (nthreads > 1024) return bad("block has " + std::to_string(nthreads) + " threads; CUDA allows at most 1024");
  if (cfg->grid[1] > 65535 || cfg->grid[2] > 65535) return bad("grid y and z must be <= 65535");
  if (cfg->schedule < 0 || cfg->schedule > 2) return bad("schedule must be 0 (forward), 1 (reverse) or 2 (random)");
  if (cfg->dynamic_smem_bytes > (1ull << 30)) return bad("dynamic_smem_bytes is larger than 1 GiB");
  install_fault_handler();
  auto args = make_args(k, params, std::index_sequence_for<A...>{});
  Launch L;
  L.grid = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
  L.block = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
  L.dyn_bytes = size_t(cfg->dynamic_smem_bytes);
  L.schedule = cfg->schedule;
  L.seed = cfg->seed;
  L.entry = &Args<A...>::call;
  L.arg = &args;
  if (cfg->arg_bytes) register_regions(k, params, cfg, L);
  unsigned long long nblocks = 1ull * cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
  std::vector<unsigned> order(nblocks);
  for (unsigned long long i = 0; i < nblocks; i++) order[i] = unsigned(cfg->schedule == 1 ? nblocks - 1 - i : i);
  uint64_t s = cfg->seed;
  if (cfg->schedule == 2) shuffle(order, s);
  unsigned workers = cfg->workers > 0 ? unsigned(cfg->workers) : std::max(1u, std::thread::hardware_concurrency());
  workers = unsigned(std::min<unsigned long long>(workers, nblocks));
  std::atomic<size_t> next{0};
  std::vector<std::array<unsigned long long, 8>> ctr(workers);
  for (auto& c : ctr) c.fill(0);
  if (workers == 1) {
    worker(&L, &order, &next, ctr[0].data());
  } else {
    std::vector<std::thread> ts;
    for (unsigned w = 0; w < workers; w++) ts.emplace_back(worker, &L, &order, &next, ctr[w].data());
    for (auto& t : ts) t.join();
  }
  for (auto& c : ctr)
    for (int i = 0; i < 8; i++) out->counters[i] += c[i];
  if (!L.err.empty()) {
    out->status = 1;
    set_msg(out, L.err);
    return 1;
  }
  return 0;
}

}  // namespace afsim

namespace afsim {
template <class T>
constexpr char elem_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return 'f';
  else if constexpr (std::is_same_v<U, double>) return 'd';
  else if constexpr (std::is_same_v<U, __half>) return 'h';
  else if constexpr (std::is_same_v<U, __nv_bfloat16>) return 'b';
  else if constexpr (std::is_same_v<U, unsigned short>) return 's';
  else if constexpr (std::is_same_v<U, int>) return 'i';
  else if constexpr (std::is_same_v<U, long long>) return 'l';
  else if constexpr (std::is_same_v<U, unsigned>) return 'u';
  else if constexpr (std::is_same_v<U, char> || std::is_same_v<U, unsigned char> || std::is_same_v<U, signed char>)
    return 'c';
  else return 'x';
}
template <class T>
std::string param_code() {
  using U = std::decay_t<T>;
  if constexpr (std::is_pointer_v<U>) {
    using E = std::remove_pointer_t<U>;
    return std::string("P") + (std::is_const_v<E> ? "c" : "") + elem_code<E>();
  } else {
    return std::string(1, elem_code<U>());
  }
}
template <class T>
const char* elem_cpp_name() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return "float";
  else if constexpr (std::is_same_v<U, double>) return "double";
  else if constexpr (std::is_same_v<U, __half>) return "__half";
  else if constexpr (std::is_same_v<U, __nv_bfloat16>) return "__nv_bfloat16";
  else if constexpr (std::is_same_v<U, unsigned short>) return "unsigned short";
  else if constexpr (std::is_same_v<U, int>) return "int";
  else if constexpr (std::is_same_v<U, long long>) return "long long";
  else if constexpr (std::is_same_v<U, unsigned>) return "unsigned";
  else if constexpr (std::is_same_v<U, char>) return "char";
  else if constexpr (std::is_same_v<U, unsigned char>) return "unsigned char";
  else if constexpr (std::is_same_v<U, void>) return "void";
  else return "<type>";
}
template <class T>
void register_region(void** params, const afsim_launch_cfg* cfg, Launch& L, int i) {
  using U = std::decay_t<T>;
  if constexpr (std::is_pointer_v<U>) {
    using E = std::remove_pointer_t<U>;
    GlobalRegion r;
    r.base = reinterpret_cast<const unsigned char*>(*static_cast<U*>(params[i]));
    r.bytes = r.base ? size_t(cfg->arg_bytes[i]) : 0;
    if constexpr (std::is_void_v<E>) r.elem = 1;
    else r.elem = sizeof(E);
    r.index = i;
    r.name = cfg->arg_names ? cfg->arg_names[i] : nullptr;
    r.type = std::string(std::is_const_v<E> ? "const " : "") + elem_cpp_name<E>() + "*";
    L.regions.push_back(std::move(r));
  }
}
template <class... A, size_t... I>
void register_all(void** params, const afsim_launch_cfg* cfg, Launch& L, std::index_sequence<I...>) {
  (register_region<A>(params, cfg, L, int(I)), ...);
}
template <class... A>
void register_regions(void (*)(A...), void** params, const afsim_launch_cfg* cfg, Launch& L) {
  register_all<A...>(params, cfg, L, std::index_sequence_for<A...>{});
}

/// Comma-separated parameter codes: `P[c]<e>` pointers (c = const), scalars `<e>`.
template <class... A>
const char* signature(void (*)(A...)) {
  static const std::string s = [] {
    std::string r;
    ((r += (r.empty() ? "" : ","), r += param_code<A>()), ...);
    return r;
  }();
  return s.c_str();
}
}  // namespace afsim

/// Defines `extern "C" int <name>__afsim(void** params, const afsim_launch_cfg*, afsim_result*)`,
/// plus `<name>__afsim_sig()` (parameter codes, checked by the Rust side) and
/// `<name>__afsim_version()`.
#define AFSIM_EXPORT_KERNEL(name)                                                                  \
  extern "C" __attribute__((visibility("default"))) int name##__afsim(                             \
      void** params, const afsim_launch_cfg* cfg, afsim_result* out) {                             \
    return ::afsim::launch(&name, params, cfg, out);                                               \
  }                                                                                                \
  extern "C" __attribute__((visibility("default"))) int name##__afsim_version() { return AFSIM_VERSION; } \
  extern "C" __attribute__((visibility("default"))) const char* name##__afsim_sig() {               \
    return ::afsim::signature(&name);                                                              \
  }
