//! `attnforge run` of a spec in a serving layout (`layout = "varlen" | "paged" | "decode"`,
//! docs/serving.md; decode takes the paged arrays and `--num-splits`):
//! packed q `[Tq, Hq, D]` with `--cu-seqlens-q`; varlen k, v `[Tk, Hkv, D]` with
//! `--cu-seqlens-k`; paged k, v caches `[num_pages, page_size, Hkv, D]` with `--block-table`
//! (`[B, max_pages]`) and `--seqlens-k` (`[B]`), all int32 `.npy`. Writes out `[Tq, Hq, D]`
//! and lse `[Hq, Tq]` (float32). The layout arrays are checked before any launch.

use attnforge::codegen::spec::Layout;
use attnforge::exec::ExecError;
use attnforge::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge::npy::{read_i32, read_packed, read_shape, read_tensor, write_staged, AnyTensor};
use attnforge::reference::{Element, Packed, PagedCache, Precision, Tensor4, VarlenOutput};
use attnforge::sim::{Schedule, SimConfig, SimElem};
use attnforge::specfile::{self, SpecFile};

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
) -> Result<VarlenOutput, CliError> {
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
    let geo_sk = x.q.tokens.max(1);
    let mut rp = sf.run_params(geo_sk, doc).map_err(CliError::input)?;
    rp.block_lists = None;
    specfile::catalog_twins(sf, &mut rp);
    rp.num_splits = a.num_splits;
    let tile = sf.tile().map_err(CliError::input)?;
    let res = match a.backend {
        RunBackend::Reference => exec_serving::reference(&sf.spec, &x, &rp, Precision::F64),
        RunBackend::Sim => {
            exec_serving::simulate(&sf.spec, &tile, &x, &rp, &SimConfig::new(Schedule::Forward))
                .map(|r| r.output)
        }
        RunBackend::Cuda => exec_serving::run_cuda(&sf.spec, &tile, &x, &rp, 0, 0).map(|r| r.0),
    };
    res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: {e}", a.spec)),
    })
}

/// Run `sf` (a serving layout) on the command's files and write out and lse.
pub(super) fn run(sf: &SpecFile, a: &RunArgs) -> Result<(), CliError> {
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
    let out = match (q, k, v) {
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
    Ok(())
}
