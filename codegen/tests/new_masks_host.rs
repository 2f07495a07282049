//! The host versions of `chunked_causal` and `dilated_causal` (`attnforge_codegen::masks`) against
//! the text of variants.md section 11 by brute force: the predicate at every grid point,
//! the class of every tile whose sides are intervals of `[0, 64)` (so every alignment of a
//! tile with a chunk or window edge), the key range of every query interval; at the bottom
//! and at the top of the `int` position range, for parameters at their range edges.

mod new_masks_common;

use attnforge_codegen::masks::{
    chunked_causal_allowed, chunked_causal_key_range, chunked_causal_tile, dilated_causal_allowed,
    dilated_causal_key_range, dilated_causal_tile,
};
use new_masks_common::*;

fn predicate(def: Def, p: i64, j: i64) -> bool {
    match def {
        Def::Chunked(c) => chunked_causal_allowed(p, j, c),
        Def::Dilated(w, d) => dilated_causal_allowed(p, j, w, d),
    }
}

fn tile(def: Def, plo: i64, phi: i64, c0: i64, c1: i64) -> attnforge_codegen::blocks::TileKind {
    match def {
        Def::Chunked(c) => chunked_causal_tile(plo, phi, c0, c1, c),
        Def::Dilated(w, d) => dilated_causal_tile(plo, phi, c0, c1, w, d),
    }
}

fn keys(def: Def, plo: i64, phi: i64, seq_k: i64) -> (i64, i64) {
    match def {
        Def::Chunked(c) => chunked_causal_key_range(plo, phi, seq_k, c),
        Def::Dilated(w, d) => dilated_causal_key_range(plo, phi, seq_k, w, d),
    }
}

/// Predicate and tile classes on the grid at `base`; the number of tiles checked.
fn check_grid(def: Def, base: i64) -> usize {
    let g = Grid::new(def, base);
    for p in 0..N {
        for j in 0..N {
            let (pp, jj) = (base + p as i64, base + j as i64);
            assert_eq!(
                predicate(def, pp, jj),
                g.allowed[p * N + j],
                "{def:?}: allowed({pp}, {jj})"
            );
        }
    }
    let ivl = intervals();
    for &(plo, phi) in &ivl {
        for &(c0, c1) in &ivl {
            let got = tile(def, base + plo, base + phi, base + c0, base + c1);
            let want = g.tile(plo, phi, c0, c1);
            assert_eq!(
                got,
                want,
                "{def:?}: tile p [{}, {}] x keys [{}, {}]",
                base + plo,
                base + phi,
                base + c0,
                base + c1
            );
        }
    }
    ivl.len() * ivl.len()
}

#[test]
fn host_predicate_and_classifier_match_brute_force() {
    let mut tiles = 0;
    for def in defs() {
        tiles += check_grid(def, 0);
    }
    for def in high_defs() {
        tiles += check_grid(def, INT_MAX - N as i64);
    }
    // every parameter set saw every tile
    assert_eq!(tiles, (defs().len() + high_defs().len()) * 2080 * 2080);
}

#[test]
fn host_key_range_is_exact() {
    let seq_k = N as i64;
    for def in defs() {
        let ext = Grid::new(def, 0).row_extents();
        for (plo, phi) in intervals() {
            let want = key_range(&ext, plo, phi).expect("every row sees its own position");
            assert_eq!(
                keys(def, plo, phi, seq_k),
                want,
                "{def:?}: rows [{plo}, {phi}]"
            );
        }
    }
}
