//! `attnforge run` of a spec in a serving layout (`layout = "varlen" | "paged" | "decode"`,
//! docs/serving.md; decode takes the paged arrays and `--num-splits`):
//! packed q `[Tq, Hq, D]` with `--cu-seqlens-q`; varlen k, v `[Tk, Hkv, D]` with
//! `--cu-seqlens-k`; paged k, v caches `[num_pages, page_size, Hkv, D]` with `--block-table`
//! (`[B, max_pages]`) and `--seqlens-k` (`[B]`), all int32 `.npy`. Writes out `[Tq, Hq, D]`
//! and lse `[Hq, Tq]` (float32). The layout arrays are checked before any launch. A varlen or
//! paged spec with `stats` also writes `--key-mass`, `--key-score`, `--top-keys` (rows of `R`
//! keys: varlen `Tk`, paged `max_pages * page_size`; docs/statistics.md).

use attnforge::codegen::spec::{KernelSpec, Layout};
use attnforge::codegen::tile::TileConfig;
use attnforge::exec::{ExecError, RunParams};
use attnforge::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge::npy::{read_i32, read_packed, read_shape, read_tensor, write_staged, AnyTensor};
use attnforge::reference::{Element, Packed, PagedCache, Precision, Tensor4, VarlenOutput};
use attnforge::sim::{Schedule, SimConfig, SimElem};
use attnforge::specfile::{decode_split_choice, ServingBackend, SpecFile};

use super::run::{RunArgs, RunBackend};

/// `cu_seqlens_q`, the paged arrays (`block_table`, `max_pages`, `seqlens_k`) or none, and
/// `cu_seqlens_k` (varlen).
type LayoutArrays = (Vec<i32>, Option<(Vec<i32>, usize, Vec<i32>)>, Vec<i32>);
use super::CliError;

fn need<'a>(
    v: &'a Option<std::path::PathBuf>,
    flag: &str,
    layout: Layout,
) -> Result<&'a std::path::Path, CliError> {
    v.as_deref().ok_or_else(|| {
        CliError::input(format!(
            "the spec has layout `{}`: {flag} is required\n  fix: pass {flag} FILE.npy (int32)",
            layout.tag()
        ))
    })
}

fn packed<T: Element>(t: Tensor4<T>) -> Packed<T> {
    let s = t.shape;
    Packed::from_vec(s.heads, s.seq, s.dim, t.data).expect("sized")
}

fn cache<T: Element>(t: Tensor4<T>) -> PagedCache<T> {
    let s = t.shape;
    PagedCache::from_vec(s.batch, s.heads, s.seq, s.dim, t.data).expect("sized")
}

fn go<T: Element + SimElem>(
    sf: &SpecFile,
    a: &RunArgs,
    (q, k, v): (Tensor4<T>, Tensor4<T>, Tensor4<T>),
    layout_arrays: LayoutArrays,
) -> Result<(VarlenOutput, Option<ServingStats>), CliError> {
    let (cu_q, paged, cu_k) = layout_arrays;
    let keys = match paged {
        Some((block_table, max_pages, seqlens_k)) => ServingKeys::Paged {
            k_cache: cache(k),
            v_cache: cache(v),
            block_table,
            max_pages,
            seqlens_k,
        },
        None => ServingKeys::Varlen {
            k: packed(k),
            v: packed(v),
            cu_seqlens_k: cu_k,
        },
    };
    let x = ServingInputs {
        q: packed(q),
        cu_seqlens_q: cu_q,
        keys,
    };
    let doc = match &a.doc {
        Some(p) => Some(read_i32(p).map_err(CliError::input)?),
        None => None,
    };
    let tile = sf.tile().map_err(CliError::input)?;
    let splits = match a.backend {
        RunBackend::Reference => a.num_splits,
        _ => decode_split_choice_printed(sf, &tile, &x, a.num_splits),
    };
    let backend = match a.backend {
        RunBackend::Reference => ServingBackend::Reference(Precision::F64),
        RunBackend::Sim => ServingBackend::Sim,
        RunBackend::Cuda => ServingBackend::Cuda(0),
    };
    let res = match a.backend {
        RunBackend::Cuda if a.stats.any() => Err(ExecError::Input {
            field: "--backend".into(),
            message:
                "the statistics outputs are read back on the simulator only (not from a GPU yet)"
                    .into(),
            fix: "pass --backend sim (or --backend reference)".into(),
        }),
        b if a.stats.any() => sf
            .serving_params(&x, doc, splits)
            .and_then(|rp| with_stats(&sf.spec, &tile, &x, &rp, b)),
        _ => sf.run_serving(&x, doc, splits, backend).map(|o| (o, None)),
    };
    res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: {e}", a.spec)),
    })
}

/// The key splits of a decode run ([`decode_split_choice`]: `--num-splits`, else the decode
/// model's count), printed with where they come from. Other layouts: `given`.
fn decode_split_choice_printed<T>(
    sf: &SpecFile,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    given: Option<usize>,
) -> Option<usize> {
    if !sf.spec.layout.is_decode() {
        return given;
    }
    let name = sf.spec.canonical_name();
    if let Some(k) = given {
        println!("{name}: {k} key splits (--num-splits)");
        return given;
    }
    let c = decode_split_choice(&sf.spec, tile, x, None);
    println!("{name}: {} (--num-splits overrides)", c.why);
    c.splits
}

/// The statistics of a serving run: `[B, Hq, Hkv, R, K]` (`R` = `stats_row_keys`: keys
/// past a sequence's `Sk_b` hold 0) and `key_mass`, `key_score`, `top_keys`.
type ServingStats = ([u64; 5], Vec<f32>, Vec<f32>, Vec<i32>);

/// The forward with statistics (simulator, or the reference), `out`/`lse` packed.
fn with_stats<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    rp: &RunParams,
    backend: RunBackend,
) -> Result<(VarlenOutput, Option<ServingStats>), ExecError> {
    let hkv = match &x.keys {
        ServingKeys::Varlen { k, .. } => k.heads,
        ServingKeys::Paged { k_cache, .. } => k_cache.heads,
    };
    let top_k = spec.stats.and_then(|s| s.top_k).unwrap_or(0);
    let b = x.cu_seqlens_q.len().saturating_sub(1);
    let row = exec_serving::stats_row_keys(x);
    let dims = [b, x.q.heads, hkv, row, top_k].map(|v| v as u64);
    let (out, km, ks, tk) = if matches!(backend, RunBackend::Reference) {
        let (out, st) = exec_serving::reference_stats(spec, x, rp, Precision::F64)?;
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<_>>();
        let tk = st.top_keys.iter().map(|&i| i as i32).collect();
        (out, f(&st.key_mass), f(&st.key_score), tk)
    } else {
        let cfg = SimConfig::new(Schedule::Forward);
        let r = exec_serving::simulate_stats(spec, tile, x, rp, &cfg)?;
        (r.output, r.key_mass, r.key_score, r.top_keys)
    };
    // [1, Hq, Tq, D] -> packed [Tq, Hq, D]; lse [Hq, Tq] is the same order in both
    let sh = out.shape;
    let mut o = VarlenOutput::empty(sh.seq, sh.heads, sh.dim);
    for (i, &v) in out.out.iter().enumerate() {
        let (h, t, e) = (i / (sh.seq * sh.dim), i / sh.dim % sh.seq, i % sh.dim);
        o.out[(t * sh.heads + h) * sh.dim + e] = v;
    }
    o.lse.copy_from_slice(&out.lse);
    Ok((o, Some((dims, km, ks, tk))))
}

/// Run `sf` (a serving layout) on the command's files and write out and lse (and the
/// statistics files of a spec with `stats`).
pub(super) fn run(sf: &SpecFile, a: &RunArgs) -> Result<(), CliError> {
    if a.stats.any() {
        super::run_stats::check_flags(sf, a)?;
    }
    let layout = sf.spec.layout;
    let out_path = a.out.as_deref().ok_or_else(|| {
        CliError::input("--out is required\n  fix: pass --out FILE.npy for the output")
    })?;
    let cu_q =
        read_i32(need(&a.cu_seqlens_q, "--cu-seqlens-q", layout)?).map_err(CliError::input)?;
    let dtype = sf.spec.dtype;
    let q = read_packed(&a.q, dtype).map_err(CliError::input)?;
    let (k, v, paged, cu_k) = if layout.is_paged() {
        let bt = need(&a.block_table, "--block-table", layout)?;
        let shape = read_shape(bt).map_err(CliError::input)?;
        let max_pages = if shape.len() == 2 {
            shape[1] as usize
        } else {
            0
        };
        let table = read_i32(bt).map_err(CliError::input)?;
        let sk = read_i32(need(&a.seqlens_k, "--seqlens-k", layout)?).map_err(CliError::input)?;
        let k = read_tensor(&a.k, dtype).map_err(CliError::input)?;
        let v = read_tensor(&a.v, dtype).map_err(CliError::input)?;
        (k, v, Some((table, max_pages, sk)), Vec::new())
    } else {
        let cu_k =
            read_i32(need(&a.cu_seqlens_k, "--cu-seqlens-k", layout)?).map_err(CliError::input)?;
        let k = read_packed(&a.k, dtype).map_err(CliError::input)?;
        let v = read_packed(&a.v, dtype).map_err(CliError::input)?;
        (k, v, None, cu_k)
    };
    let arrays = (cu_q, paged, cu_k);
    let (out, stats) = match (q, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v)) => go(sf, a, (q, k, v), arrays),
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v)) => go(sf, a, (q, k, v), arrays),
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => {
            go(sf, a, (q, k, v), arrays)
        }
        _ => unreachable!("read_tensor and read_packed return the spec's dtype"),
    }?;
    let (t, h, d) = (out.tokens as u64, out.heads as u64, out.dim as u64);
    let o: Vec<f32> = out.out.iter().map(|&x| x as f32).collect();
    let l: Vec<f32> = out.lse.iter().map(|&x| x as f32).collect();
    let staged = match &stats {
        Some((dims, km, ks, tk)) => super::run_stats::stage(a, *dims, (km, ks, tk))?,
        None => Vec::new(),
    };
    let so = write_staged(out_path, &[t, h, d], &o).map_err(CliError::input)?;
    let sl = match &a.lse {
        Some(lp) => Some(write_staged(lp, &[h, t], &l).map_err(CliError::input)?),
        None => None,
    };
    so.commit().map_err(CliError::input)?;
    if let Some(sl) = sl {
        sl.commit().map_err(CliError::input)?;
    }
    println!(
        "{}: wrote {} [{t}, {h}, {d}]{}",
        sf.spec.canonical_name(),
        out_path.display(),
        a.lse.as_ref().map_or(String::new(), |p| format!(
            " and {} [{h}, {t}]",
            p.display()
        ))
    );
    super::run_stats::commit(a, staged)
}
