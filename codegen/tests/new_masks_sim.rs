//! The CUDA of `chunked_causal` and `dilated_causal` (`af_mask_*`, `af_tile_*`,
//! `af_keys_lo_*` / `af_keys_hi_*` in `cuda/af_attn.cuh`) run on the simulator, exactly as a
//! kernel pastes them, by the probe kernel `tests/cuda/new_masks_probe.cu`:
//!
//! - the element predicate at every point of a 64 x 64 grid of positions against the text of
//!   variants.md section 11 and against the reference's mask (the oracle);
//! - the class of every tile whose query and key sides are intervals of the grid (2080 x 2080
//!   tiles, so every alignment of a tile side with a chunk or window edge) against the class
//!   counted from the text's predicate;
//! - the key range of every query interval against the first and last key the text allows
//!   (grid at position 0, `seq_k` = 64), and at the top of the `int` range (positions up to
//!   `INT_MAX - 1`, where a 32-bit product or an unchecked cast would overflow) against the
//!   host versions, which `tests/new_masks_host.rs` checks by brute force.
//!
//! The probe also compiles with NVRTC for sm_80 without warnings and without a 64-bit
//! division or remainder in its PTX.

mod new_masks_common;

use attnforge_codegen::blocks::TileKind;
use attnforge_codegen::emit::{ATTN_CUH, PRELUDE_CUH};
use attnforge_codegen::masks::{chunked_causal_key_range, dilated_causal_key_range};
use attnforge_sim::{SimArg, SimConfig, SimKernel};
use new_masks_common::*;

const PROBE: &str = include_str!("cuda/new_masks_probe.cu");

fn probe_source() -> String {
    let mut src = String::new();
    // The mask functions need only the prelude and the attention helpers, not a main loop.
    for text in [PRELUDE_CUH, ATTN_CUH] {
        src.push_str(text);
        src.push('\n');
    }
    src.push_str(PROBE);
    src
}

fn probe_kernel() -> SimKernel {
    SimKernel::build(&probe_source(), "nm_probe").unwrap_or_else(|e| panic!("{e}"))
}

/// The functions are real CUDA, and their divisions are 32-bit (a 64-bit one is a long
/// subroutine): PTX `div`/`rem` only on 32-bit types.
#[test]
fn probe_compiles_with_nvrtc_without_64_bit_division() {
    let c = attnforge_runtime::compile(&probe_source(), "nm_probe", attnforge_runtime::Arch::Sm80)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.log.contains("warning"), "NVRTC warnings:\n{}", c.log);
    let wide: Vec<&str> = c
        .ptx
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            (l.starts_with("div.") || l.starts_with("rem."))
                && (l.contains("64 ") || l.contains("64\t"))
        })
        .collect();
    let narrow = c
        .ptx
        .lines()
        .filter(|l| l.trim_start().starts_with("rem."))
        .count();
    assert!(narrow > 0, "the probe's remainders are not in the PTX");
    assert!(
        wide.is_empty(),
        "64-bit division in the mask functions: {wide:?}"
    );
}

/// What the probe computed for one mask on the grid at `base`.
struct Probed {
    pred: Vec<u8>,
    tiles: Vec<u8>,
    keys: Vec<i64>,
}

fn probe(k: &SimKernel, def: Def, base: i64, seq_k: i64) -> Probed {
    let ivl = intervals();
    let flat: Vec<i32> = ivl
        .iter()
        .flat_map(|&(a, b)| [a as i32, b as i32])
        .collect();
    let (mask, a, b) = match def {
        Def::Chunked(c) => (0, c, 0),
        Def::Dilated(w, d) => (1, w, d),
    };
    let mut out = Probed {
        pred: vec![9; N * N],
        tiles: vec![9; ivl.len() * ivl.len()],
        keys: vec![-7; 2 * ivl.len()],
    };
    let mut args = [
        SimArg::I32(mask),
        SimArg::I64(base),
        SimArg::I32(N as i32),
        SimArg::I32(seq_k as i32),
        SimArg::I32(a as i32),
        SimArg::I32(b as i32),
        SimArg::input(&flat),
        SimArg::I32(ivl.len() as i32),
        SimArg::output(&mut out.pred),
        SimArg::output(&mut out.tiles),
        SimArg::output(&mut out.keys),
    ];
    let threads = 128u32;
    let blocks = (ivl.len() as u32).div_ceil(threads);
    k.launch(blocks, threads, 0, &mut args, &SimConfig::default())
        .unwrap_or_else(|e| panic!("{def:?}: {e}"));
    out
}

fn kind(code: u8) -> TileKind {
    match code {
        0 => TileKind::Skip,
        1 => TileKind::Full,
        2 => TileKind::Partial,
        c => panic!("not a tile class: {c}"),
    }
}

/// Predicate and tile classes of the probe against the text (and the reference).
fn check_probe(def: Def, base: i64, got: &Probed) {
    let g = Grid::new(def, base);
    let oracle = def.reference();
    for p in 0..N {
        for j in 0..N {
            let (pp, jj) = (base + p as i64, base + j as i64);
            let want = g.allowed[p * N + j];
            assert_eq!(
                got.pred[p * N + j],
                u8::from(want),
                "{def:?}: CUDA allowed({pp}, {jj})"
            );
            assert_eq!(
                oracle.allowed(0, 0, pp, jj, (base as usize) + N),
                want,
                "{def:?}: reference allowed({pp}, {jj})"
            );
        }
    }
    let ivl = intervals();
    for (t, &(plo, phi)) in ivl.iter().enumerate() {
        for (u, &(c0, c1)) in ivl.iter().enumerate() {
            assert_eq!(
                kind(got.tiles[t * ivl.len() + u]),
                g.tile(plo, phi, c0, c1),
                "{def:?}: CUDA tile p [{}, {}] x keys [{}, {}]",
                base + plo,
                base + phi,
                base + c0,
                base + c1
            );
        }
    }
}

#[test]
fn cuda_mask_functions_match_brute_force_at_position_zero() {
    let k = probe_kernel();
    let seq_k = N as i64;
    for def in defs() {
        let got = probe(&k, def, 0, seq_k);
        check_probe(def, 0, &got);
        let ext = Grid::new(def, 0).row_extents();
        for (t, (plo, phi)) in intervals().into_iter().enumerate() {
            let want = key_range(&ext, plo, phi).expect("every row sees its own position");
            assert_eq!(
                (got.keys[2 * t], got.keys[2 * t + 1]),
                want,
                "{def:?}: CUDA key range of rows [{plo}, {phi}]"
            );
        }
    }
}

#[test]
fn cuda_mask_functions_at_the_top_of_the_int_range() {
    let k = probe_kernel();
    let base = INT_MAX - N as i64;
    for def in high_defs() {
        let got = probe(&k, def, base, INT_MAX);
        check_probe(def, base, &got);
        for (t, (plo, phi)) in intervals().into_iter().enumerate() {
            let (plo, phi) = (base + plo, base + phi);
            let want = match def {
                Def::Chunked(c) => chunked_causal_key_range(plo, phi, INT_MAX, c),
                Def::Dilated(w, d) => dilated_causal_key_range(plo, phi, INT_MAX, w, d),
            };
            assert_eq!(
                (got.keys[2 * t], got.keys[2 * t + 1]),
                want,
                "{def:?}: CUDA key range of rows [{plo}, {phi}]"
            );
            // the range is exact: row phi sees hi - 1, some row sees lo
            assert!(def.allowed(phi, want.1 - 1), "{def:?}: [{plo}, {phi}]");
            assert!(
                (plo..=phi).any(|p| def.allowed(p, want.0)),
                "{def:?}: [{plo}, {phi}] lo {}",
                want.0
            );
        }
    }
}
