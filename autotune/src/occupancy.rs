//! Occupancy per architecture from a ptxas resource report: resident blocks per SM from
//! registers, shared memory and threads (the CUDA occupancy calculator's rules).
//!
//! ```
//! use attnforge_autotune::occupancy::{occupancy, ArchLimits};
//! use attnforge_autotune::Arch;
//! // 128 threads, 128 registers, 48 KiB of shared memory on sm_90.
//! let o = occupancy(&ArchLimits::of(Arch::Sm90), 128, 128, 48 * 1024);
//! // registers: 65536 / (4 warps x 4096) = 4; shared memory: 228 KiB / (48 + 1) KiB = 4.
//! assert_eq!(o.blocks_per_sm, 4);
//! ```

use serde::{Deserialize, Serialize};

use crate::Arch;

/// Per-SM limits of an architecture (CUDA programming guide, "Technical Specifications per
/// Compute Capability").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchLimits {
    /// Architecture.
    pub arch: Arch,
    /// SMs of the reference part (A100: 108, H100/H200 SXM: 132).
    pub sms: usize,
    /// 32-bit registers per SM.
    pub registers_per_sm: usize,
    /// Register allocation unit per warp (registers are granted per warp in units of 256).
    pub reg_alloc_unit: usize,
    /// Shared memory per SM usable by blocks, bytes (sm_80: 164 KiB, sm_90: 228 KiB).
    pub smem_per_sm: usize,
    /// Shared memory the driver reserves per resident block, bytes (1 KiB on sm_80+).
    pub smem_reserved_per_block: usize,
    /// Resident threads per SM.
    pub threads_per_sm: usize,
    /// Resident blocks per SM.
    pub blocks_per_sm: usize,
    /// FP32 FMA lanes per SM (64 on A100, 128 on H100).
    pub fma_lanes: usize,
    /// SM clock, GHz (boost: A100 1.41, H100/H200 1.98).
    pub clock_ghz: f64,
    /// DRAM bandwidth, GB/s (A100 80 GB: 2039, H200: 4800).
    pub dram_gbps: f64,
}

impl ArchLimits {
    /// The limits of `arch`'s reference part (A100 for sm_80, H200 for sm_90).
    pub fn of(arch: Arch) -> Self {
        match arch {
            Arch::Sm80 => ArchLimits {
                arch,
                sms: 108,
                registers_per_sm: 65536,
                reg_alloc_unit: 256,
                smem_per_sm: 164 * 1024,
                smem_reserved_per_block: 1024,
                threads_per_sm: 2048,
                blocks_per_sm: 32,
                fma_lanes: 64,
                clock_ghz: 1.41,
                dram_gbps: 2039.0,
            },
            Arch::Sm90 => ArchLimits {
                arch,
                sms: 132,
                registers_per_sm: 65536,
                reg_alloc_unit: 256,
                smem_per_sm: 228 * 1024,
                smem_reserved_per_block: 1024,
                threads_per_sm: 2048,
                blocks_per_sm: 32,
                fma_lanes: 128,
                clock_ghz: 1.98,
                dram_gbps: 4800.0,
            },
        }
    }
}

/// Which resource bounds the resident blocks per SM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limiter {
    /// The register file.
    Registers,
    /// Shared memory.
    SharedMemory,
    /// Resident threads.
    Threads,
    /// The resident-block limit.
    Blocks,
}

/// Occupancy of one kernel configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Occupancy {
    /// Resident blocks per SM (0: the block cannot run at all).
    pub blocks_per_sm: usize,
    /// Blocks allowed by registers.
    pub by_registers: usize,
    /// Blocks allowed by shared memory.
    pub by_smem: usize,
    /// Blocks allowed by threads.
    pub by_threads: usize,
    /// The binding limit.
    pub limiter: Limiter,
    /// Resident warps / maximum warps (0..=1).
    pub warp_occupancy: f64,
}

/// Occupancy of a block of `threads` threads using `registers` per thread and `smem_bytes`
/// of shared memory (static + dynamic).
pub fn occupancy(l: &ArchLimits, threads: usize, registers: usize, smem_bytes: usize) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (registers.max(1) * 32).div_ceil(l.reg_alloc_unit) * l.reg_alloc_unit;
    let by_registers = l.registers_per_sm / (regs_per_warp * warps);
    let per_block_smem = smem_bytes + l.smem_reserved_per_block;
    let by_smem = l.smem_per_sm / per_block_smem;
    let by_threads = l.threads_per_sm / (warps * 32);
    let mut blocks = l.blocks_per_sm;
    let mut limiter = Limiter::Blocks;
    for (n, lim) in [
        (by_registers, Limiter::Registers),
        (by_smem, Limiter::SharedMemory),
        (by_threads, Limiter::Threads),
    ] {
        if n < blocks {
            blocks = n;
            limiter = lim;
        }
    }
    Occupancy {
        blocks_per_sm: blocks,
        by_registers,
        by_smem,
        by_threads,
        limiter,
        warp_occupancy: (blocks * warps) as f64 / (l.threads_per_sm / 32) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_bind_as_the_calculator_says() {
        let l = ArchLimits::of(Arch::Sm80);
        // 255 registers x 256 threads: 8 warps x 8192 regs = 65536 -> one block.
        let o = occupancy(&l, 256, 255, 0);
        assert_eq!((o.blocks_per_sm, o.limiter), (1, Limiter::Registers));
        // 100 KiB of shared memory on sm_80 (164 KiB per SM): one block.
        let o = occupancy(&l, 64, 32, 100 * 1024);
        assert_eq!((o.blocks_per_sm, o.limiter), (1, Limiter::SharedMemory));
        // the same on sm_90 (228 KiB): two.
        let o = occupancy(&ArchLimits::of(Arch::Sm90), 64, 32, 100 * 1024);
        assert_eq!(o.blocks_per_sm, 2);
        // tiny blocks: the 32-block limit.
        let o = occupancy(&l, 32, 16, 0);
        assert_eq!((o.blocks_per_sm, o.limiter), (32, Limiter::Blocks));
        // 1024 threads: two blocks by threads (registers 32 -> 64K / 32K = 2 as well).
        let o = occupancy(&l, 1024, 24, 0);
        assert_eq!(o.by_threads, 2);
        // over the per-SM shared memory: zero.
        let o = occupancy(&l, 128, 32, 200 * 1024);
        assert_eq!(o.blocks_per_sm, 0);
    }
}
