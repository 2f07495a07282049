//! Host versions of the masks `chunked_causal(C)` and `dilated_causal(w, d)` (variants.md
//! section 11): the element predicate, the exact closed-form tile classifier and the exact
//! key range of a query block, for block-list building and tests. Each mirrors the CUDA
//! function of `cuda/af_attn.cuh` named in its documentation (the same closed forms, in
//! `i64` arithmetic); the `*_EXPRS` constants are the CUDA calls a kernel makes.
//!
//! Positions are absolute (query row `i` sits at `p = i + Sk - Sq`); both masks reject
//! `Sq > Sk`, so query positions are `0 <= p < Sk`. Parameter ranges: `chunk >= 1`,
//! `window >= 0`, `dilation >= 1` (the callers validate them).
//!
//! ```
//! use attnforge_codegen::blocks::TileKind;
//! use attnforge_codegen::new_masks_host::*;
//! // chunks of 4 keys: position 9 sees 8 and 9
//! assert!(chunked_causal_allowed(9, 8, 4) && !chunked_causal_allowed(9, 7, 4));
//! assert_eq!(chunked_causal_tile(8, 11, 8, 8, 4), TileKind::Full);
//! // keys at distances 0, 5, 10, 15 from position 17
//! assert!(dilated_causal_allowed(17, 2, 3, 5) && !dilated_causal_allowed(17, 3, 3, 5));
//! assert_eq!(dilated_causal_key_range(17, 17, 64, 3, 5), (2, 18));
//! ```

use crate::blocks::TileKind;

/// The CUDA expressions of one mask in a kernel: the element predicate (over `q_pos`,
/// `kv_pos`), the tile classifier (over `p_lo, p_hi, c0, c1`) and the key range
/// `[keys_lo, keys_hi)` of a query block (over `p_lo, p_hi, seq_k`), each followed by the
/// mask's kernel parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaExprs {
    /// `allowed(q_pos, kv_pos)`.
    pub mask: &'static str,
    /// `AF_TILE_SKIP` / `AF_TILE_FULL` / `AF_TILE_PARTIAL` of a tile.
    pub tile: &'static str,
    /// First key any row of the block may see.
    pub keys_lo: &'static str,
    /// One past the last key any row of the block may see.
    pub keys_hi: &'static str,
}

/// `chunked_causal` with its kernel parameter `chunk_size` (C).
pub const CHUNKED_CAUSAL_EXPRS: CudaExprs = CudaExprs {
    mask: "af_mask_chunked_causal(q_pos, kv_pos, chunk_size)",
    tile: "af_tile_chunked_causal(p_lo, p_hi, c0, c1, chunk_size)",
    keys_lo: "af_keys_lo_chunked_causal(p_lo, p_hi, seq_k, chunk_size)",
    keys_hi: "af_keys_hi_chunked_causal(p_lo, p_hi, seq_k, chunk_size)",
};

/// `dilated_causal` with its kernel parameters `window` (w) and `dilation` (d).
pub const DILATED_CAUSAL_EXPRS: CudaExprs = CudaExprs {
    mask: "af_mask_dilated_causal(q_pos, kv_pos, window, dilation)",
    tile: "af_tile_dilated_causal(p_lo, p_hi, c0, c1, window, dilation)",
    keys_lo: "af_keys_lo_dilated_causal(p_lo, p_hi, seq_k, window, dilation)",
    keys_hi: "af_keys_hi_dilated_causal(p_lo, p_hi, seq_k, window, dilation)",
};

/// `chunked_causal(C)`: `j <= p` and `floor(j / C) == floor(p / C)` (chunks counted from
/// position 0), written as `p - j <= p mod C` (one remainder). Mirrors `af_mask_chunked_causal`.
pub fn chunked_causal_allowed(p: i64, j: i64, chunk: i64) -> bool {
    j <= p && p - j <= p.rem_euclid(chunk)
}

/// `dilated_causal(w, d)`: `p - j` is one of `0, d, ..., w d`. Mirrors `af_mask_dilated_causal`.
pub fn dilated_causal_allowed(p: i64, j: i64, window: i64, dilation: i64) -> bool {
    let dist = p - j;
    dist >= 0 && dist <= window.saturating_mul(dilation) && dist % dilation == 0
}

/// Exact classification of the tile of query positions `plo..=phi` and key positions
/// `c0..=c1` (non-empty, `0 <= plo`, `0 <= c0`). Row `p` sees the keys
/// `[C floor(p / C), p]`, both ends nondecreasing in `p`: some element is allowed iff the
/// first row at or right of `c0` exists and its chunk starts by `c1`; every element is iff
/// `c1 <= plo` and the last row's chunk starts by `c0`. Mirrors `af_tile_chunked_causal`.
pub fn chunked_causal_tile(plo: i64, phi: i64, c0: i64, c1: i64, chunk: i64) -> TileKind {
    let first_row = c0.max(plo);
    if first_row > phi || first_row / chunk > c1 / chunk {
        TileKind::Skip
    } else if c1 <= plo && phi / chunk == c0 / chunk {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

/// Exact classification of a tile (as [`chunked_causal_tile`]). The distances `p - j` over
/// the tile are every integer of `[plo - c1, phi - c0]`: some element is allowed iff a
/// multiple of `d` lies in that range clipped to `[0, w d]`. With `d >= 2` two neighbouring
/// distances are never both allowed, so a tile is `Full` only when it is one element, or
/// with `d = 1` when all its distances lie in `[0, w]`. Mirrors `af_tile_dilated_causal`.
pub fn dilated_causal_tile(
    plo: i64,
    phi: i64,
    c0: i64,
    c1: i64,
    window: i64,
    dilation: i64,
) -> TileKind {
    let reach = window.saturating_mul(dilation);
    let near = (plo - c1).max(0);
    let far = (phi - c0).min(reach);
    if far < near || far / dilation * dilation < near {
        TileKind::Skip
    } else if (plo == phi && c0 == c1) || (dilation == 1 && plo - c1 >= 0 && phi - c0 <= reach) {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

/// Exact key range `[lo, hi)` of the query positions `plo..=phi` (`0 <= plo <= phi < seq_k`):
/// `lo` = the chunk start of `plo` (row `plo` sees it, no row sees an earlier key), `hi` =
/// `phi + 1`. Mirrors `af_keys_lo_chunked_causal` / `af_keys_hi_chunked_causal`.
pub fn chunked_causal_key_range(plo: i64, phi: i64, seq_k: i64, chunk: i64) -> (i64, i64) {
    let lo = if plo <= 0 { 0 } else { plo / chunk * chunk };
    (lo, (phi + 1).min(seq_k))
}

/// Exact key range `[lo, hi)` of the query positions `plo..=phi` (`0 <= plo <= phi < seq_k`).
/// Row `p` first sees `p - w d` once `p >= w d`, else `p mod d`; below `w d` the minimum over
/// the block is 0 exactly when a multiple of `d` lies in `[plo, phi]` (`w d` itself is one).
/// `hi = phi + 1`. Mirrors `af_keys_lo_dilated_causal` / `af_keys_hi_dilated_causal`.
pub fn dilated_causal_key_range(
    plo: i64,
    phi: i64,
    seq_k: i64,
    window: i64,
    dilation: i64,
) -> (i64, i64) {
    let reach = window.saturating_mul(dilation);
    let lo = if plo >= reach {
        plo - reach
    } else if plo <= 0 {
        0
    } else {
        let r = plo % dilation;
        if r == 0 || phi - plo >= dilation - r {
            0
        } else {
            r
        }
    };
    (lo, (phi + 1).min(seq_k))
}
