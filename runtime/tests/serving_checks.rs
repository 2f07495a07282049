//! Serving layouts (variants.md section 13): bad layout arrays are refused on the host before
//! any launch (the error names the array and the index), specs that a layout cannot serve
//! are refused by validation, and one compiled kernel serves every batch: different lengths,
//! batch sizes, page tables and page sizes hit the same NVRTC cache entry and the same
//! simulator kernel.

use std::sync::Arc;

use attnforge_reference::{Packed, PagedCache};
use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::{self, ExecError, RunParams};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::{Schedule, SimConfig};
use attnforge_runtime::{build_with_cache, Compiler, KernelCache, KernelSource};

fn f(t: usize, h: usize, d: usize) -> f32 {
    ((t * 7 + h * 3 + d) % 11) as f32 / 11.0 - 0.5
}

fn varlen(cu_q: &[i32], cu_k: &[i32], tq: usize, tk: usize) -> ServingInputs<f32> {
    ServingInputs {
        q: Packed::from_fn(tq, 2, 64, f),
        cu_seqlens_q: cu_q.to_vec(),
        keys: ServingKeys::Varlen {
            k: Packed::from_fn(tk, 2, 64, f),
            v: Packed::from_fn(tk, 2, 64, f),
            cu_seqlens_k: cu_k.to_vec(),
        },
    }
}

fn paged(
    cu_q: &[i32],
    table: &[i32],
    max_pages: usize,
    seqlens_k: &[i32],
    num_pages: usize,
    page_size: usize,
) -> ServingInputs<f32> {
    let cache = || {
        PagedCache::from_fn(num_pages, page_size, 2, 64, |p, s, h, d| {
            f(p * page_size + s, h, d)
        })
    };
    ServingInputs {
        q: Packed::from_fn(*cu_q.last().unwrap() as usize, 2, 64, f),
        cu_seqlens_q: cu_q.to_vec(),
        keys: ServingKeys::Paged {
            k_cache: cache(),
            v_cache: cache(),
            block_table: table.to_vec(),
            max_pages,
            seqlens_k: seqlens_k.to_vec(),
        },
    }
}

fn spec(mask: Mask, layout: Layout) -> KernelSpec {
    KernelSpec::new(DType::F32, HeadDim::D64, mask, ScoreMod::None).with_layout(layout)
}

fn sim() -> SimConfig {
    SimConfig::new(Schedule::Forward)
}

/// The paths of a refused run's errors (a run that launched would not be refused).
fn refused(spec: &KernelSpec, x: &ServingInputs<f32>) -> Vec<String> {
    let tile = default_tile(spec, Arch::Sm80).unwrap();
    match exec_serving::simulate(spec, &tile, x, &RunParams::default(), &sim()) {
        Err(ExecError::Spec(errs)) => errs.into_iter().map(|e| e.path).collect(),
        Err(ExecError::Input { field, .. }) => vec![field],
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_cu_seqlens_are_refused_with_the_array_and_index() {
    let s = spec(Mask::Causal, Layout::Varlen);
    // decreasing query offsets
    assert_eq!(
        refused(&s, &varlen(&[0, 5, 3, 8], &[0, 5, 6, 9], 8, 9)),
        ["cu_seqlens_q[2]"]
    );
    // the last key offset is not the packed length
    assert_eq!(
        refused(&s, &varlen(&[0, 2, 4], &[0, 3, 7], 4, 9)),
        ["cu_seqlens_k[2]"]
    );
    // a first offset that is not 0
    assert_eq!(
        refused(&s, &varlen(&[1, 4], &[0, 4], 4, 4)),
        ["cu_seqlens_q[0]"]
    );
    // B differs between q and k
    assert!(refused(&s, &varlen(&[0, 2, 4], &[0, 4], 4, 4)).contains(&"cu_seqlens_k".to_string()));
    // Sq_b > Sk_b for a mask that does not define it
    let local = spec(Mask::Local, Layout::Varlen);
    assert_eq!(
        refused(&local, &varlen(&[0, 2, 7], &[0, 3, 7], 7, 7)),
        ["cu_seqlens_q[2]"]
    );
}

#[test]
fn bad_page_tables_are_refused_with_the_array_and_index() {
    let s = spec(Mask::Causal, Layout::Paged);
    // sequence 1 reads page 4 of a 4-page cache; its second entry (-1) is never read
    assert_eq!(
        refused(&s, &paged(&[0, 1, 3], &[2, 0, 4, -1], 2, &[20, 9], 4, 16)),
        ["block_table[1][0]"]
    );
    // a page size that is not a power of two
    assert_eq!(
        refused(&s, &paged(&[0, 1], &[0], 1, &[3], 1, 3)),
        ["page_size"]
    );
    // a sequence longer than its block-table row
    assert_eq!(
        refused(&s, &paged(&[0, 1], &[0, 1], 2, &[33], 3, 16)),
        ["seqlens_k[0]"]
    );
    // inputs of the other layout
    assert_eq!(refused(&s, &varlen(&[0, 2], &[0, 2], 2, 2)), ["layout"]);
}

#[test]
fn specs_a_layout_cannot_serve_are_refused_by_validation() {
    let block_sparse = Mask::BlockSparse { mask: None };
    let paths = |s: &KernelSpec, tile: &TileConfig| -> Vec<String> {
        emit_with(s, tile, Arch::Sm90, SymbolStyle::Canonical)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    let s = spec(block_sparse, Layout::Varlen);
    assert_eq!(paths(&s, &TileConfig::new(64, 64, 4, 1)), ["layout"]);
    let s = spec(Mask::Document, Layout::Paged);
    assert_eq!(paths(&s, &TileConfig::new(64, 64, 4, 1)), ["layout"]);
    let bf = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None)
        .with_layout(Layout::Varlen);
    let mut wg = TileConfig::new(128, 128, 8, 2);
    wg.wgmma = true;
    assert!(paths(&bf, &wg).contains(&"tile.wgmma".to_string()));
}

/// One emitted kernel for every batch: three batches of different sizes, lengths, page
/// tables and page sizes compile to one NVRTC cache entry (hits after the first) and run on
/// one simulator kernel, each equal to the reference.
#[test]
fn one_kernel_serves_every_length_and_page_table() {
    let s = spec(Mask::Causal, Layout::Paged).with_gqa();
    let tile = default_tile(&s, Arch::Sm80).unwrap();
    let batches = [
        paged(&[0, 3, 40], &[5, 1, 0, 2, 3, 4], 3, &[20, 37], 6, 16),
        paged(&[0, 1], &[7, 0, 3, 1, 2, 6, 5, 4], 8, &[120], 8, 16),
        paged(
            &[0, 2, 2, 9, 10],
            &[0, 2, 0, 1, 1, 0, 0, 0],
            2,
            &[2, 0, 4, 1],
            3,
            2,
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(tmp.path());
    let compiler = Compiler::global().expect("NVRTC (run `cargo xtask setup`)");
    let first = exec::sim_kernel(&s, &tile).unwrap();
    for (i, x) in batches.iter().enumerate() {
        let k = emit_with(&s, &tile, Arch::Sm80, SymbolStyle::WithTile).unwrap();
        let src = KernelSource {
            source: &k.source,
            name: &k.name,
            options: attnforge_runtime::CompileOptions::new(Arch::Sm80),
        };
        build_with_cache(compiler, &cache, &src).unwrap();
        let entries = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(entries, 1, "batch {i}: one cache entry for every batch");
        exec_serving::check(&s, &tile, x, &RunParams::default(), &sim())
            .unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert!(
            Arc::ptr_eq(&first, &exec::sim_kernel(&s, &tile).unwrap()),
            "batch {i}: the simulator kernel was rebuilt"
        );
    }
}
