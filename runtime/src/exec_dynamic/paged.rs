//! The key-selecting decode pipelines (the fused top-k, landmark attention) over a paged KV
//! cache (variants.md section 13): packed q `[Tq, Hq, D]` with `cu_seqlens_q`,
//! `k_cache, v_cache [num_pages, page_size, Hkv, D]`,
//! `block_table [B, max_pages]`, `seqlens_k [B]`; out `[Tq, Hq, D]`, lse `[Hq, Tq]`. The
//! kernels address key rows through the block table (`af_page_row`, the static paged
//! layout's mapping); the layout arrays pass `validate_serving` before any launch; the
//! reference gathers each sequence and calls the dense one.

use std::collections::BTreeMap;

use attnforge_codegen::dynamic::{
    emit_stage_in, validate_dynamic, DynKeys, DynamicSpec, LandmarkMode,
};
use attnforge_reference::{
    serving_per_sequence, Element, KvLayout, PagedKv, Precision, VarlenOutput,
};
use attnforge_sim::{SimCounters, SimElem};

use super::{
    input_err, reference_output, take_outputs, Buf, DynBuffer, DynInputs, Machine, ScalarSource,
    Shape,
};
use crate::exec::{Backend, ExecError};
use crate::exec_serving::{check_kv_tensors, check_layout_arrays, kv_layout, ServingInputs};
use crate::pipeline::Execution;

/// One run over a paged cache.
#[derive(Clone, Debug)]
pub struct DynPagedRun {
    /// `out [Tq, Hq, D]`, `lse [Hq, Tq]`.
    pub output: VarlenOutput,
    /// Counters summed over every launch (simulator only).
    pub counters: SimCounters,
    /// Per launch: kernel name and counters.
    pub stages: Vec<(String, SimCounters)>,
    /// `sel [Hq, Tq, k]`: the selected keys (landmark: blocks) of each row, -1 padded
    /// (empty without a selection stage).
    pub sel: Vec<i32>,
}

/// The paged pieces of `x`, or an error naming `layout` for packed keys.
fn paged_kv<T>(x: &ServingInputs<T>) -> Result<PagedKv<'_, T>, ExecError> {
    match kv_layout(x) {
        KvLayout::Paged(kv) => Ok(kv),
        KvLayout::Varlen(_) => Err(input_err(
            "layout",
            "the data-dependent families read a paged cache or dense keys, not packed keys",
            "pass ServingKeys::Paged (or dense tensors to exec_dynamic::run)",
        )),
    }
}

/// Whether `spec` reads a paged cache: the key-selecting decode families (the fused top-k
/// and landmark attention).
pub fn reads_paged(spec: &DynamicSpec) -> bool {
    matches!(
        spec,
        DynamicSpec::Topk { split: false, .. } | DynamicSpec::Landmark { .. }
    )
}

/// A spec that reads a paged cache, or an error naming the field to change.
fn check_spec(spec: &DynamicSpec) -> Result<(), ExecError> {
    validate_dynamic(spec).map_err(ExecError::Spec)?;
    match spec {
        s if reads_paged(s) => Ok(()),
        DynamicSpec::Topk { split: true, .. } => Err(input_err(
            "mode",
            "the split top-k reads dense keys only",
            "use mode = \"fused\" on a paged cache",
        )),
        s => Err(input_err(
            "layout",
            format!("{} reads dense keys only", s.canonical_name()),
            "use the top-k retrieval or landmark family on a paged cache",
        )),
    }
}

/// The reference on a paged cache in `precision`: each sequence gathered, then the dense
/// reference of `spec` ([`reference_output`]; `scale` `None`: `1/sqrt(D)`). Also the input
/// checks of [`run_paged`].
pub fn reference_paged<T: Element>(
    spec: &DynamicSpec,
    x: &ServingInputs<T>,
    scale: Option<f32>,
    precision: Precision,
) -> Result<VarlenOutput, ExecError> {
    let kv = KvLayout::Paged(paged_kv(x)?);
    serving_per_sequence(&x.q, &x.cu_seqlens_q, &kv, |_, q, k, v| {
        let mut dense = DynInputs::new(q.clone(), k.clone(), v.clone());
        dense.scale = scale;
        reference_output(spec, &dense, precision)
    })
}

/// The buffers of a paged run: q, the caches, the layout arrays, the outputs and the
/// selection lists (absent without a selection stage: landmark training reads `sel` null).
fn paged_buffers<T: Element>(
    spec: &DynamicSpec,
    x: &ServingInputs<T>,
    kv: &PagedKv<'_, T>,
) -> BTreeMap<DynBuffer, Buf<T>> {
    let (tq, hq, d) = (x.q.tokens, x.q.heads, x.q.dim);
    // selected keys (blocks) per row; 0: no selection (landmark training mode, sel null)
    let k = match *spec {
        DynamicSpec::Topk { k, .. } => k,
        DynamicSpec::Landmark {
            mode: LandmarkMode::Retrieval { top_k },
            ..
        } => top_k,
        _ => 0,
    };
    let mut bufs = BTreeMap::new();
    bufs.insert(DynBuffer::Q, Buf::Elem(x.q.data.clone()));
    bufs.insert(DynBuffer::K, Buf::Elem(kv.k_cache.data.clone()));
    bufs.insert(DynBuffer::V, Buf::Elem(kv.v_cache.data.clone()));
    bufs.insert(DynBuffer::O, Buf::Elem(vec![T::from_f64(0.0); tq * hq * d]));
    bufs.insert(DynBuffer::Lse, Buf::F32(vec![0.0f32; tq * hq]));
    if k > 0 {
        bufs.insert(DynBuffer::Sel, Buf::I32(vec![-7; (tq * hq * k).max(1)]));
    }
    let i32s = |v: &[i32]| Buf::I32(v.to_vec());
    bufs.insert(DynBuffer::CuSeqlensQ, i32s(&x.cu_seqlens_q));
    bufs.insert(DynBuffer::BlockTable, i32s(kv.block_table));
    bufs.insert(DynBuffer::SeqlensK, i32s(kv.seqlens_k));
    bufs
}

/// Run the pipeline of `spec` (the fused top-k or landmark attention) on a paged cache (simulator or GPU; `scale`
/// `None`: `1/sqrt(D)`). Every input
/// is checked before any launch: the spec, the tensors, the layout arrays (errors name the
/// array and index: `block_table[1][0]`, `seqlens_k[0]`, `cu_seqlens_q[2]`), `Sq_b <= Sk_b`.
pub fn run_paged<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &ServingInputs<T>,
    scale: Option<f32>,
    backend: &Backend,
) -> Result<DynPagedRun, ExecError> {
    check_spec(spec)?;
    if T::DTYPE != crate::exec::reference_dtype(spec.dtype()) {
        return Err(input_err(
            "q",
            format!(
                "element type {} but the spec's dtype is {:?}",
                T::DTYPE.name(),
                spec.dtype()
            ),
            "pass tensors of the spec's dtype",
        ));
    }
    let kv = paged_kv(x)?;
    let d = spec.head_dim().get();
    check_kv_tensors(x, d)?;
    let geo = check_layout_arrays(x, false, None)?;
    let _ = reference_paged(spec, x, scale, Precision::Naive)?;
    let (tq, hq) = (x.q.tokens, x.q.heads);
    let shape = Shape {
        batch: geo.batch,
        heads_q: hq,
        heads_kv: kv.k_cache.heads,
        seq_q: geo.max_seqlen_q,
        seq_k: geo.max_seqlen_k,
    };
    let scalars = ScalarSource {
        spec,
        shape,
        rows: hq * tq,
        scale: scale.unwrap_or(1.0 / (d as f32).sqrt()),
        hax: None,
        summary_chunks: 0,
        paged: Some([kv.max_pages, kv.k_cache.page_size, tq]),
    };
    let bufs = paged_buffers(spec, x, &kv);
    let mut mach = Machine {
        bufs,
        scalars,
        backend,
        stages: Vec::new(),
        total: SimCounters::default(),
    };
    for stage in spec.stages() {
        let kern = emit_stage_in(spec, stage, DynKeys::Paged).map_err(ExecError::Spec)?;
        mach.launch(&kern, stage.geometry(spec, &shape), &[], 0)?;
    }
    let mut bufs = mach.bufs;
    let sel = match bufs.remove(&DynBuffer::Sel) {
        Some(Buf::I32(sel)) => sel,
        _ => Vec::new(),
    };
    let (o, lse) = take_outputs(&mut bufs)?;
    let mut output = VarlenOutput::empty(tq, hq, d);
    output.out = o.iter().map(|e| e.to_f64()).collect();
    output.lse = lse.iter().map(|&e| f64::from(e)).collect();
    Ok(DynPagedRun {
        output,
        counters: mach.total,
        stages: mach.stages,
        sel,
    })
}

/// Run on a paged cache and compare with the f64 reference by the tolerance rule of
/// variants.md section 0 (the naive same-precision error as the scale).
pub fn check_paged<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &ServingInputs<T>,
    scale: Option<f32>,
    backend: &Backend,
) -> Result<(crate::pipeline::Report, Vec<i32>), ExecError> {
    let run = run_paged(spec, x, scale, backend)?;
    let want = reference_paged(spec, x, scale, Precision::F64)?.to_attn_output();
    let naive = reference_paged(spec, x, scale, Precision::Naive)?.to_attn_output();
    let exec = Execution {
        output: run.output.to_attn_output(),
        counters: Some(run.counters),
        dense_tiles: None,
        stages: run.stages,
        indices: BTreeMap::new(),
    };
    let name = format!("{}_paged", spec.canonical_name());
    let r = crate::pipeline::compare(&name, spec.dtype(), exec, &want, &naive)?;
    Ok((r, run.sel))
}
