//! The data-dependent families (landmark, HAX, CCA, top-k, lse merge) in the CLI: list rows,
//! `check` (exec_dynamic on the simulator or a GPU vs the f64 reference), `emit` (every
//! kernel of the pipeline plus a pipeline JSON) and `run` (.npy in and out).

use std::path::{Path, PathBuf};

use attnforge::codegen::dynamic::{emit_dynamic, DynamicKernel, DynamicSpec, LandmarkMode, Stage};
use attnforge::codegen::shape::Shape;
use attnforge::codegen::spec::DType;
use attnforge::codegen::tile::Arch;
use attnforge::exec::{Backend, ExecError};
use attnforge::exec_serving::ServingInputs;
use attnforge::kernels::exec_dynamic::{self, DynInputs, HaxExtra};
use attnforge::kernels::pipeline;
use attnforge::npy::{read_tensor, write_bytes_atomic, AnyTensor};
use attnforge::reference::{
    assert_close, attention_over_keys, AttnOptions, AttnOutput, Element, Packed, Precision, Shape4,
    Sharing, Tensor4, Tolerance,
};
use attnforge::sim::SimElem;
use attnforge::specfile::DynSpecFile;
use half::{bf16, f16};

use super::check::Verdict;
use super::common::random_values;
use super::run::RunBackend;
use super::variant::Variant;
use super::CliError;

/// The `family = ".."` tag of a dynamic spec.
pub fn family_tag(s: &DynamicSpec) -> &'static str {
    s.family_tag()
}

/// The `mode = ".."` of a dynamic spec (`-` for families without modes).
pub fn mode_tag(s: &DynamicSpec) -> &'static str {
    s.mode_tag().unwrap_or("-")
}

/// The `[params]` of a dynamic spec as `key=value` pairs, in its family table's order.
pub fn params_of(s: &DynamicSpec) -> Vec<(&'static str, usize)> {
    s.param_values()
        .into_iter()
        .map(|(p, v)| (p.name, v))
        .collect()
}

/// `mem_freq=63 top_k=4`.
pub fn params_text(s: &DynamicSpec) -> String {
    let p = params_of(s);
    if p.is_empty() {
        return "-".into();
    }
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn input_error(df: &DynSpecFile, e: ExecError) -> CliError {
    CliError::input(format!("{}: {e}", df.location()))
}

// ---- check ------------------------------------------------------------------------------

/// Integer values in {-1, 0, 1} (exact in every dtype; dot products exact in f32, so
/// rankings have exact ties and no near-ties, variants.md section 0).
fn ints<T: Element>(shape: Shape4, seed: u64, stream: u64) -> Tensor4<T> {
    let v = random_values(shape.numel(), seed, stream);
    let data = v
        .into_iter()
        .map(|x| T::from_f32(((x + 1.0) * 1.5).floor().clamp(0.0, 2.0) - 1.0))
        .collect();
    Tensor4::from_vec(shape, data).expect("sized")
}

/// Multiples of 1/16 in [-1, 1] (exact in every dtype).
fn fracs<T: Element>(shape: Shape4, seed: u64, stream: u64) -> Tensor4<T> {
    let v = random_values(shape.numel(), seed, stream);
    let data = v
        .into_iter()
        .map(|x| T::from_f32((x * 16.0).round() / 16.0))
        .collect();
    Tensor4::from_vec(shape, data).expect("sized")
}

/// Smallest |x_hat . Hp[:, t]| (f64) over every query head, token and bit, for the query
/// side and the key side the head hashes: the sign test of the hash is only well-posed
/// (f32 kernel vs f64 reference) when it is not tiny.
fn hash_margin<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    hp: &Tensor4<f32>,
    sharing: Sharing,
) -> f64 {
    let (hq, hkv) = (q.shape.heads, k.shape.heads);
    let group = hq / hkv.max(1);
    let nb = hp.shape.dim;
    let mut m = f64::INFINITY;
    for b in 0..q.shape.batch {
        let hb = if hp.shape.batch == 1 { 0 } else { b };
        for h in 0..hq {
            let hh = match sharing {
                Sharing::Shared => 0,
                Sharing::PerQueryHead => h,
                Sharing::PerKvHead => h / group,
            };
            for (x, xh) in [(q, h), (k, h / group)] {
                let sh = x.shape;
                let cols: Vec<(f64, f64)> = (0..sh.dim)
                    .map(|c| {
                        let mean =
                            (0..sh.seq).map(|i| x.get(b, xh, i, c)).sum::<f64>() / sh.seq as f64;
                        let norm = (0..sh.seq)
                            .map(|i| (x.get(b, xh, i, c) - mean).powi(2))
                            .sum::<f64>()
                            .sqrt()
                            .max(1e-12);
                        (mean, norm)
                    })
                    .collect();
                for i in 0..sh.seq {
                    for t in 0..nb {
                        let d: f64 = (0..sh.dim)
                            .map(|c| {
                                (x.get(b, xh, i, c) - cols[c].0) / cols[c].1 * hp.get(hb, hh, c, t)
                            })
                            .sum();
                        m = m.min(d.abs());
                    }
                }
            }
        }
    }
    m
}

/// Smallest hash margin accepted for the random HAX problem of `check`.
const HASH_MARGIN: f64 = 1e-4;

fn heads_of(s: Sharing, hq: usize, hkv: usize) -> usize {
    match s {
        Sharing::Shared => 1,
        Sharing::PerQueryHead => hq,
        Sharing::PerKvHead => hkv,
    }
}

/// The random inputs of `check` for a q/k/v family.
fn inputs<T: Element>(df: &DynSpecFile, seed: u64) -> Result<DynInputs<T>, String> {
    let p = df.problem;
    let d = df.spec.head_dim().get();
    let qs = Shape4::new(p.batch, p.heads_q, p.seq_q, d);
    let ks = Shape4::new(p.batch, p.heads_kv, p.seq_k, d);
    let mut x = match df.spec {
        // Ranking by q.k: exact integer scores.
        DynamicSpec::Landmark { .. } | DynamicSpec::Topk { .. } => {
            DynInputs::new(ints(qs, seed, 1), ints(ks, seed, 2), fracs(ks, seed, 3))
        }
        _ => DynInputs::new(fracs(qs, seed, 1), fracs(ks, seed, 2), fracs(ks, seed, 3)),
    };
    x.scale = df.scale;
    if let DynamicSpec::Longheads { chunk, .. } = df.spec {
        if p.seq_q < p.seq_k {
            // Decoding rows: summaries of multiples of 1/16, so q . r is exact in f32 and
            // the kernel and the reference rank the same exact scores.
            x.r = Some(fracs(
                Shape4::new(p.batch, p.heads_q, p.seq_k / chunk, d),
                seed,
                5,
            ));
        }
    }
    if let DynamicSpec::Hax { hash_bits, .. } = df.spec {
        let hs = df.hyperplane_sharing;
        let hp_shape = Shape4::new(1, heads_of(hs, p.heads_q, p.heads_kv), d, hash_bits);
        let mut hp = None;
        for attempt in 0..64u64 {
            let v = random_values(hp_shape.numel(), seed, 100 + attempt);
            let cand = Tensor4::from_vec(
                hp_shape,
                v.into_iter()
                    .map(|e| (e * 1000.0).round() / 1000.0)
                    .collect(),
            )
            .expect("sized");
            if hash_margin(&x.q, &x.k, &cand, hs) >= HASH_MARGIN {
                hp = Some(cand);
                break;
            }
        }
        let hp = hp.ok_or_else(|| {
            format!(
                "no hyperplanes with hash margin >= {HASH_MARGIN} in 64 draws (try another --seed)"
            )
        })?;
        let kss = df.ks_sharing;
        let ks_shape = Shape4::new(p.batch, heads_of(kss, p.heads_q, p.heads_kv), p.seq_k, 1);
        // Integer scores in [-2, 2]: exact ties, resolved by index in kernel and reference.
        let ks = Tensor4::from_vec(
            ks_shape,
            random_values(ks_shape.numel(), seed, 4)
                .into_iter()
                .map(|e| ((e + 1.0) * 2.5).floor().clamp(0.0, 4.0) - 2.0)
                .collect(),
        )
        .expect("sized");
        x.hax = Some(HaxExtra {
            hyperplanes: hp,
            ks,
            hyperplane_sharing: hs,
            ks_sharing: kss,
        });
    }
    Ok(x)
}

fn verdict_of(
    name: String,
    r: Result<(AttnOutput, AttnOutput, AttnOutput, exec_dynamic::DynRun), ExecError>,
    df: &DynSpecFile,
) -> Result<Verdict, CliError> {
    match r {
        Ok((got, want, naive, run)) => {
            let tol = Tolerance::for_dtype(attnforge::exec::reference_dtype(df.spec.dtype()));
            let extra = serde_json::json!({
                "kernels": run.stages.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                "keys_gathered": run.counters.keys_gathered,
                "select_work": run.counters.select_work,
            });
            match assert_close(&got, &want, &naive, tol.rtol, tol.atol) {
                Ok(c) => Ok(Verdict {
                    fingerprint: Some(super::check::fingerprint(&run.output, Some(&run.counters))),
                    ..Verdict::passed(name, &c, extra)
                }),
                Err(e) => Ok(Verdict {
                    extra,
                    ..Verdict::failed(name, e.to_string())
                }),
            }
        }
        Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
            Err(input_error(df, e))
        }
        Err(e) => Ok(Verdict::failed(name, e.to_string())),
    }
}

fn check_typed<T: Element + SimElem>(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let name = df.spec.canonical_name();
    if let DynamicSpec::LseMerge { .. } = df.spec {
        return verdict_of(name, check_merge::<T>(df, backend, seed), df);
    }
    let x =
        inputs::<T>(df, seed).map_err(|m| CliError::failed(format!("{}: {m}", df.location())))?;
    if matches!(df.spec, DynamicSpec::Longheads { .. }) && x.r.is_none() {
        return check_longheads_prefill(df, &x, backend);
    }
    let r = (|| {
        let run = exec_dynamic::run(&df.spec, &x, backend)?;
        let want = pipeline::reference(&df.spec, &x, Precision::F64)?;
        let naive = pipeline::reference(&df.spec, &x, Precision::Naive)?;
        Ok((run.output.clone(), want, naive, run))
    })();
    verdict_of(name, r, df)
}

/// LongHeads prefill, stage by stage: the summary kernel's `r` against the reference's (the
/// relative oracle on `r`), then selection and attention against the reference given that
/// `r`. The selection ranks `q . r`, discontinuous in `r` (variants.md section 0): the
/// kernel's f32 `r` and the f64 one may order a near-tie differently, so the end-to-end
/// output is not compared with the f64 prefill.
fn check_longheads_prefill<T: Element + SimElem>(
    df: &DynSpecFile,
    x: &DynInputs<T>,
    backend: &Backend,
) -> Result<Verdict, CliError> {
    let name = df.spec.canonical_name();
    let p = exec_dynamic::longheads_params(&df.spec);
    let as_out = |t: &Tensor4<f64>| AttnOutput {
        out: t.data.clone(),
        lse: vec![0.0; t.shape.batch * t.shape.heads * t.shape.seq],
        shape: t.shape,
    };
    let r = (|| {
        let run = exec_dynamic::run(&df.spec, x, backend)?;
        let r = run.summaries.as_ref().map_or_else(
            || Tensor4::from_fn(Shape4::new(0, 0, 0, 0), |_, _, _, _| 0.0),
            |r| Tensor4::<f64>::from_fn(r.shape, |b, h, i, e| r.get(b, h, i, e)),
        );
        let want = attnforge::reference::longheads_summaries(&x.q, &x.k, &x.v, &p, Precision::F64)?;
        let naive =
            attnforge::reference::longheads_summaries(&x.q, &x.k, &x.v, &p, Precision::Naive)?;
        let tol = Tolerance::for_dtype(attnforge::exec::reference_dtype(df.spec.dtype()));
        if let Err(e) = assert_close(
            &as_out(&r),
            &as_out(&want),
            &as_out(&naive),
            tol.rtol,
            tol.atol,
        ) {
            return Ok(Err(format!("summaries r: {e}")));
        }
        let want = attnforge::reference::longheads_attention(
            &x.q,
            &x.k,
            &x.v,
            &r,
            &p,
            &AttnOptions::reference(),
        )?;
        let naive = attnforge::reference::longheads_attention(
            &x.q,
            &x.k,
            &x.v,
            &r,
            &p,
            &AttnOptions::naive(),
        )?;
        Ok(Ok((run.output.clone(), want, naive, run)))
    })();
    match r {
        Ok(Err(m)) => Ok(Verdict::failed(name, m)),
        Ok(Ok(x)) => verdict_of(name, Ok(x), df),
        Err(e) => verdict_of(name, Err(e), df),
    }
}

/// lse_merge: two partial results over disjoint key sets (even keys; odd keys of the first
/// half, empty for every fifth row) merged by the kernel vs attention over their union.
fn check_merge<T: Element + SimElem>(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<(AttnOutput, AttnOutput, AttnOutput, exec_dynamic::DynRun), ExecError> {
    let p = df.problem;
    let d = df.spec.head_dim().get();
    let q = fracs::<T>(Shape4::new(p.batch, p.heads_q, p.seq_q, d), seed, 1);
    let k = fracs::<T>(Shape4::new(p.batch, p.heads_kv, p.seq_k, d), seed, 2);
    let v = fracs::<T>(Shape4::new(p.batch, p.heads_kv, p.seq_k, d), seed, 3);
    let rows = p.batch * p.heads_q * p.seq_q;
    let sk = p.seq_k;
    let a: Vec<Vec<usize>> = (0..rows)
        .map(|_| (0..sk).filter(|j| j % 2 == 0).collect())
        .collect();
    let b: Vec<Vec<usize>> = (0..rows)
        .map(|r| {
            if r % 5 == 0 {
                vec![]
            } else {
                (0..sk / 2).filter(|j| j % 2 == 1).collect()
            }
        })
        .collect();
    let u: Vec<Vec<usize>> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            let mut s = x.clone();
            s.extend(y);
            s.sort_unstable();
            s
        })
        .collect();
    let pa = attention_over_keys(&q, &k, &v, &a, &AttnOptions::reference())?;
    let pb = attention_over_keys(&q, &k, &v, &b, &AttnOptions::reference())?;
    let want = attention_over_keys(&q, &k, &v, &u, &AttnOptions::reference())?;
    let naive = attention_over_keys(&q, &k, &v, &u, &AttnOptions::naive())?;
    let run = exec_dynamic::merge::<T>(&df.spec, &pa, &pb, backend)?;
    Ok((run.output.clone(), want, naive, run))
}

/// `attnforge check` of one dynamic spec: its own problem and, for a catalog entry, the
/// extra problem of check_problems.rs (seed + 1).
pub fn check_with_extra(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let v = check(df, backend, seed)?;
    Ok(match super::check_problems::dynamic_extra(df) {
        Some((label, extra)) => super::check::with_extra_problem(
            v,
            &label,
            check(&extra, backend, seed.wrapping_add(1))?,
        ),
        None => v,
    })
}

/// `attnforge check` of one dynamic spec on its own problem.
pub fn check(df: &DynSpecFile, backend: &Backend, seed: u64) -> Result<Verdict, CliError> {
    if super::recycled::is_recycled(&df.spec) {
        return super::recycled::check(df, backend, seed);
    }
    match df.spec.dtype() {
        DType::F32 => check_typed::<f32>(df, backend, seed),
        DType::F16 => check_typed::<f16>(df, backend, seed),
        DType::Bf16 => check_typed::<bf16>(df, backend, seed),
    }
}

// ---- emit -------------------------------------------------------------------------------

/// Launch rule of a stage (grid, block, dynamic shared memory), as text.
fn geometry_formula(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::LandmarkSelect => ("(ceil(Sq / 4), Hq, B)", "4 * 8 * top_k"),
        Stage::TopkSelect => ("(ceil(Sq / 4), Hq, B)", "4 * 8 * k"),
        Stage::CcaPool => (
            "(ceil(P / 4), Hq, B), P = max(0, floor((S - window) / group))",
            "0",
        ),
        Stage::HaxHash => ("(Hq, B, 1)", "4 * (4 * D + 2^hash_bits)"),
        Stage::HaxKeySelect => ("(Hq, B, 1); skipped when k_ks = 0", "8 * k_ks"),
        Stage::LseMerge => ("(ceil(B * Hq * Sq / 4), 1, 1)", "0"),
        Stage::LongheadsSummary => ("(ceil(floor(Sk / chunk) / 4), Hq, B)", "0"),
        Stage::LongheadsSelect => (
            "(ceil(Sq / 4), Hq, B)",
            "4 * 8 * max(chunks_per_query - 3, 1)",
        ),
        _ => ("(ceil(Sq / 4), Hq, B)", "0"),
    }
}

/// How the pipeline launches a stage (TopkAttnPart runs twice).
fn launch_note(stage: Stage, spec: &DynamicSpec) -> &'static str {
    match (stage, spec) {
        (Stage::TopkAttnPart, _) => "launched twice: part = 1 (static window) writes o -> o_a, lse -> lse_a; part = 2 (selected keys) writes o -> o_b, lse -> lse_b",
        (Stage::LseMerge, DynamicSpec::Topk { .. }) => "once: merges (o_a, lse_a) and (o_b, lse_b) of topk_attn_part into o, lse; rows = B * Hq * Sq",
        (Stage::LseMerge, _) => "once: merges (o_a, lse_a) and (o_b, lse_b) into o, lse; rows = B * Hq * Sq",
        (
            Stage::LandmarkAttn,
            DynamicSpec::Landmark {
                mode: LandmarkMode::Train,
                ..
            },
        ) => "once: sel = NULL, sel_width = 0 (every earlier block)",
        (Stage::LandmarkAttn, _) => "once: reads sel [rows, top_k] of landmark_select, sel_width = top_k",
        (Stage::LongheadsSummary, _) => "prefill only (Sq == Sk): writes r [B, Hq, floor(Sk / chunk), D] (f32); decoding skips it and passes r as an input",
        (Stage::LongheadsSelect, _) => "once: writes sel [rows, sel_width], sel_width = max(chunks_per_query, min(begin / chunk, ceil(Sk / chunk))), -1 padded; n_chunks = r's third extent",
        (Stage::LongheadsAttn, _) => "once: reads sel of longheads_select, sel_width as there",
        _ => "once",
    }
}

/// `attnforge emit` of one dynamic spec: `<kernel>.cu` + `<kernel>.json` per stage and
/// `<pipeline>.pipeline.json`.
pub fn emit(
    df: &DynSpecFile,
    label: &str,
    arch: Arch,
    out_dir: &Path,
    no_ptxas: bool,
) -> Result<(), CliError> {
    let kernels = emit_dynamic(&df.spec).map_err(|errs| {
        CliError::input(format!(
            "{label}: {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let p = df.problem;
    let prob = Shape {
        batch: p.batch,
        heads_q: p.heads_q,
        heads_kv: p.heads_kv,
        seq_q: p.seq_q,
        seq_k: p.seq_k,
    };
    let pipeline = df.spec.canonical_name();
    let params: serde_json::Map<String, serde_json::Value> = params_of(&df.spec)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let mut stages_json = Vec::new();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut lines = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let meta = kernel_meta(df, k, i, arch, &prob, no_ptxas, label)?;
        let text = serde_json::to_string_pretty(&meta).map_err(CliError::failed)?;
        let cu = out_dir.join(format!("{}.cu", k.name));
        files.push((cu.clone(), k.source.as_bytes().to_vec()));
        files.push((out_dir.join(format!("{}.json", k.name)), text.into_bytes()));
        stages_json.push(serde_json::json!({
            "kernel": k.name, "stage": k.stage.stem(), "launch": launch_note(k.stage, &df.spec),
        }));
        let regs = meta
            .get("ptxas")
            .and_then(|p| p.get("registers"))
            .map_or("-".to_string(), |r| r.to_string());
        lines.push(format!(
            "{}  -> {} ({} args, {} threads, {} registers)",
            k.name,
            cu.display(),
            k.args.len(),
            meta["block_threads"],
            regs
        ));
    }
    let pj = serde_json::json!({
        "pipeline": pipeline,
        "family": family_tag(&df.spec),
        "mode": mode_tag(&df.spec),
        "dtype": df.spec.dtype().short(),
        "head_dim": df.spec.head_dim().get(),
        "params": params,
        "spec": df.spec,
        "default_scale": match df.spec {
            DynamicSpec::Hax { .. } => 1.0,
            _ => 1.0 / (df.spec.head_dim().get() as f64).sqrt(),
        },
        "scale": df.scale,
        "stages": stages_json,
        "arch_name": arch.sm_name(),
    });
    let pjp = out_dir.join(format!("{pipeline}.pipeline.json"));
    files.push((
        pjp.clone(),
        serde_json::to_string_pretty(&pj)
            .map_err(CliError::failed)?
            .into_bytes(),
    ));
    for (path, bytes) in &files {
        write_bytes_atomic(path, bytes).map_err(CliError::input)?;
    }
    for l in lines {
        println!("{l}");
    }
    println!(
        "{pipeline}: {} kernels, launch order in {}",
        kernels.len(),
        pjp.display()
    );
    Ok(())
}

fn kernel_meta(
    df: &DynSpecFile,
    k: &DynamicKernel,
    index: usize,
    arch: Arch,
    prob: &Shape,
    no_ptxas: bool,
    label: &str,
) -> Result<serde_json::Value, CliError> {
    let ptxas = if no_ptxas {
        serde_json::Value::Null
    } else {
        let a = arch;
        let b = attnforge::kernels::build_kernel_cached(&k.source, &k.name, a).map_err(|e| {
            CliError::failed(format!(
                "{label}: NVRTC/ptxas failed for `{}`: {e}\n  fix: run `cargo xtask setup` for the CUDA toolchain, or pass --no-ptxas",
                k.name
            ))
        })?;
        serde_json::to_value(&b.resources).map_err(CliError::failed)?
    };
    let geo = k.stage.geometry(&df.spec, prob);
    let (grid, smem) = geometry_formula(k.stage);
    let signature: Vec<serde_json::Value> = k
        .args
        .iter()
        .map(|x| serde_json::json!({"name": x.name, "c_type": x.kind.c_type()}))
        .collect();
    Ok(serde_json::json!({
        "kernel_name": k.name,
        "pipeline": df.spec.canonical_name(),
        "stage": k.stage.stem(),
        "stage_index": index,
        "launch": launch_note(k.stage, &df.spec),
        "spec": df.spec,
        "args": k.args,
        "signature": signature,
        "block_threads": geo.block[0],
        "grid_formula": grid,
        "dynamic_smem_formula": smem,
        "problem_launch": {
            "problem": {"batch": prob.batch, "heads_q": prob.heads_q, "heads_kv": prob.heads_kv,
                        "seq_q": prob.seq_q, "seq_k": prob.seq_k},
            "grid": geo.grid, "block": geo.block, "dynamic_smem_bytes": geo.dynamic_smem_bytes,
        },
        "arch_name": arch.sm_name(),
        "ptxas": ptxas,
    }))
}

// ---- run --------------------------------------------------------------------------------

/// Files of `attnforge run` for a dynamic spec.
pub struct RunFiles<'a> {
    pub q: &'a Path,
    pub k: &'a Path,
    pub v: &'a Path,
    pub hyperplanes: Option<&'a Path>,
    pub ks: Option<&'a Path>,
    /// LongHeads decoding: the summaries r (f32 .npy).
    pub r: Option<&'a Path>,
    /// LongHeads prefill: where to write the summaries r.
    pub r_out: Option<&'a Path>,
}

fn sharing_from_heads(
    field: &str,
    path: &Path,
    heads: usize,
    hq: usize,
    hkv: usize,
) -> Result<Sharing, CliError> {
    if heads == 1 {
        Ok(Sharing::Shared)
    } else if heads == hq {
        Ok(Sharing::PerQueryHead)
    } else if heads == hkv {
        Ok(Sharing::PerKvHead)
    } else {
        Err(CliError::input(format!(
            "{}: {field} has {heads} heads; q has {hq} and k {hkv}\n  fix: give 1 (shared), Hq (per query head) or Hkv (per kv head) heads",
            path.display()
        )))
    }
}

fn mk<T>(
    df: &DynSpecFile,
    q: Tensor4<T>,
    k: Tensor4<T>,
    v: Tensor4<T>,
    (extra, r): (Option<HaxExtra>, Option<Tensor4<f32>>),
) -> DynInputs<T> {
    let mut x = DynInputs::new(q, k, v);
    x.scale = df.scale;
    x.hax = extra;
    x.r = r;
    x
}

/// The output, and for a LongHeads prefill the summaries r (the kernel's, or the f64
/// reference's rounded to f32 on the reference backend).
fn go<T: Element + SimElem>(
    df: &DynSpecFile,
    x: DynInputs<T>,
    at: RunBackend,
) -> Result<(AttnOutput, Option<Tensor4<f32>>), ExecError> {
    if !matches!(df.spec, DynamicSpec::Longheads { .. }) || x.r.is_some() {
        return Ok((super::run::execute(&df.spec, &x, at)?, None));
    }
    let backend = match at {
        RunBackend::Reference => {
            let out = pipeline::reference(&df.spec, &x, Precision::F64)?;
            let p = exec_dynamic::longheads_params(&df.spec);
            let r =
                attnforge::reference::longheads_summaries(&x.q, &x.k, &x.v, &p, Precision::F64)?;
            let r = Tensor4::from_fn(r.shape, |b, h, i, e| r.get(b, h, i, e) as f32);
            return Ok((out, Some(r)));
        }
        RunBackend::Sim => Backend::sim(),
        RunBackend::Cuda => Backend::Cuda(0),
    };
    let run = exec_dynamic::run(&df.spec, &x, &backend)?;
    Ok((run.output, run.summaries))
}

/// LongHeads' `--r` (read, f32) and the `--r` / `--r-out` rules.
fn longheads_files(
    df: &DynSpecFile,
    label: &str,
    f: &RunFiles<'_>,
    same_lengths: bool,
) -> Result<Option<Tensor4<f32>>, CliError> {
    if !matches!(df.spec, DynamicSpec::Longheads { .. }) {
        return Ok(None); // refused before reading anything (run)
    }
    let Some(rp) = f.r else {
        if !same_lengths {
            return Err(CliError::input(format!(
                "{label}: r: decoding rows (q shorter than k) need the chunk summaries of the prefill\n  fix: pass --r r.npy (f32 [B, Hq, n_chunks, D], written by a prefill run with --r-out)"
            )));
        }
        return Ok(None);
    };
    if f.r_out.is_some() {
        return Err(CliError::input(format!(
            "{label}: --r-out with --r: a decoding run computes no summaries\n  fix: drop --r-out (or --r for a prefill, Sq == Sk)"
        )));
    }
    let AnyTensor::F32(r) = read_tensor(rp, DType::F32).map_err(CliError::input)? else {
        unreachable!("read_tensor returns f32")
    };
    Ok(Some(r))
}

/// `attnforge run` of a dynamic spec: the pipeline's output on q/k/v (HAX: q2/k2/x plus
/// `--hyperplanes` and `--ks`).
pub fn run(
    df: &DynSpecFile,
    label: &str,
    f: &RunFiles<'_>,
    at: RunBackend,
) -> Result<AttnOutput, CliError> {
    let name = df.spec.canonical_name();
    if let DynamicSpec::LseMerge { .. } = df.spec {
        return Err(CliError::input(format!(
            "{label}: `attnforge run` does not support lse_merge yet (it merges two partial results (o_a, lse_a), (o_b, lse_b), not q/k/v)\n  fix: use `attnforge check {label}` (kernel vs reference on random partial results), or the library's attnforge::kernels::exec_dynamic::merge"
        )));
    }
    let is_hax = matches!(df.spec, DynamicSpec::Hax { .. });
    let is_longheads = matches!(df.spec, DynamicSpec::Longheads { .. });
    if !is_longheads && (f.r.is_some() || f.r_out.is_some()) {
        return Err(CliError::input(format!(
            "{label}: --r / --r-out are LongHeads summaries; `{name}` does not take them\n  fix: remove them"
        )));
    }
    if !is_hax && (f.hyperplanes.is_some() || f.ks.is_some()) {
        return Err(CliError::input(format!(
            "{label}: --hyperplanes / --ks are HAX inputs; `{name}` does not take them\n  fix: remove them"
        )));
    }
    let dt = df.spec.dtype();
    let q = read_tensor(f.q, dt).map_err(CliError::input)?;
    let k = read_tensor(f.k, dt).map_err(CliError::input)?;
    let v = read_tensor(f.v, dt).map_err(CliError::input)?;
    let scale = df.scale.map_or(
        if is_hax {
            1.0
        } else {
            1.0 / (df.spec.head_dim().get() as f64).sqrt()
        },
        f64::from,
    );
    super::run::check_magnitudes(label, [(f.q, &q), (f.k, &k), (f.v, &v)], scale)?;
    let (hq, hkv) = (q.shape().heads, k.shape().heads);
    let r = longheads_files(df, label, f, q.shape().seq == k.shape().seq)?;
    let extra = if is_hax {
        let (Some(hp), Some(ks)) = (f.hyperplanes, f.ks) else {
            return Err(CliError::input(format!(
                "{label}: HAX needs --hyperplanes (f32 [1|B, H', N, hash_bits]) and --ks (f32 [1|B, H', S, 1])\n  fix: pass both .npy files (H' = 1 shared, Hq per query head, Hkv per kv head)"
            )));
        };
        let AnyTensor::F32(hpt) = read_tensor(hp, DType::F32).map_err(CliError::input)? else {
            unreachable!("read_tensor returns f32")
        };
        let AnyTensor::F32(kst) = read_tensor(ks, DType::F32).map_err(CliError::input)? else {
            unreachable!("read_tensor returns f32")
        };
        Some(HaxExtra {
            hyperplane_sharing: sharing_from_heads("hyperplanes", hp, hpt.shape.heads, hq, hkv)?,
            ks_sharing: sharing_from_heads("ks", ks, kst.shape.heads, hq, hkv)?,
            hyperplanes: hpt,
            ks: kst,
        })
    } else {
        None
    };
    let extra = (extra, r);
    let res = match (q, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v)) => {
            go(df, mk(df, q, k, v, extra), at)
        }
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v)) => {
            go(df, mk(df, q, k, v, extra), at)
        }
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => {
            go(df, mk(df, q, k, v, extra), at)
        }
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    let (out, summaries) = res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{label}: {e}"))
        }
        e => CliError::failed(format!("{label}: {e}")),
    })?;
    if let (Some(path), Some(r)) = (f.r_out, summaries) {
        let s = r.shape;
        let shape = [s.batch, s.heads, s.seq, s.dim].map(|x| x as u64);
        attnforge::npy::write_staged(path, &shape, &r.data)
            .and_then(|st| st.commit())
            .map_err(CliError::input)?;
        println!(
            "{name}: wrote {} [{}, {}, {}, {}] (chunk summaries)",
            path.display(),
            s.batch,
            s.heads,
            s.seq,
            s.dim
        );
    }
    Ok(out)
}

// ---- check on a paged cache ----------------------------------------------------------------

/// The serving test batch of a data-dependent spec on a paged cache at `page_size`: its
/// problem's sequence, an empty one, one token on one key, a few tokens off the page grid;
/// page 0 is every sequence's first page (a shared prefix), the rest in reverse pool order.
/// q and k in {-1, 0, 1} (exact ranking ties, no near-ties), v multiples of 1/16.
fn paged_inputs<T: Element>(df: &DynSpecFile, page_size: usize, seed: u64) -> ServingInputs<T> {
    let p = &df.problem;
    let (sq, sk) = (p.seq_q.min(p.seq_k), p.seq_k);
    let lens = [(sq, sk), (0, 0), (1, 1), (3, 13 + sk / 3)];
    let (hq, hkv, d) = (p.heads_q, p.heads_kv, df.spec.head_dim().get());
    let tq: usize = lens.iter().map(|l| l.0).sum();
    let q = ints::<T>(Shape4::new(1, 1, tq * hq, d), seed, 1).data;
    let pages: usize = lens.iter().map(|l| l.1.div_ceil(page_size)).sum::<usize>() + 1;
    let n = pages * page_size * hkv * d;
    let (k, v) = (
        ints::<T>(Shape4::new(1, 1, n, 1), seed, 2),
        fracs::<T>(Shape4::new(1, 1, n, 1), seed, 3),
    );
    let mut cache = k.data.into_iter().chain(v.data);
    let sk_lens: Vec<usize> = lens.iter().map(|l| l.1).collect();
    let mut cu = vec![0i32];
    cu.extend(lens.iter().scan(0, |t, l| {
        *t += l.0 as i32;
        Some(*t)
    }));
    let q = Packed::from_vec(tq, hq, d, q).expect("sized");
    ServingInputs::shared_prefix_paged(q, cu, &sk_lens, (page_size, hkv), || {
        cache.next().expect("sized")
    })
}

fn check_paged_typed<T: Element + SimElem>(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let name = format!("{}_paged", df.spec.canonical_name());
    let mut worst: Option<Verdict> = None;
    for page_size in [1, 16, 128] {
        let x = paged_inputs::<T>(df, page_size, seed);
        let v = match exec_dynamic::check_paged(&df.spec, &x, df.scale, backend) {
            Ok((r, _)) => Verdict::passed(name.clone(), &r.close, serde_json::Value::Null),
            Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
                return Err(input_error(df, e))
            }
            Err(e) => Verdict::failed(name.clone(), format!("[page size {page_size}] {e}")),
        };
        if !v.ok {
            return Ok(v);
        }
        worst = Some(match worst {
            Some(w) if w.out_err >= v.out_err => w,
            _ => v,
        });
    }
    let mut v = worst.expect("three page sizes");
    v.problems = 3;
    Ok(v)
}

/// `attnforge check --layout paged` of a data-dependent spec: the key-selecting decode
/// families (the fused top-k, landmark attention) on a paged cache at page sizes 1, 16 and
/// 128 against the per-sequence reference; other families are `Err(reason)` (they read
/// dense keys only).
pub fn check_paged(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Result<Verdict, String>, CliError> {
    if !exec_dynamic::reads_paged(&df.spec) {
        return Ok(Err(
            "reads dense keys only (on a paged cache: the fused top-k and landmark attention)"
                .into(),
        ));
    }
    match df.spec.dtype() {
        DType::F32 => check_paged_typed::<f32>(df, backend, seed),
        DType::F16 => check_paged_typed::<f16>(df, backend, seed),
        DType::Bf16 => check_paged_typed::<bf16>(df, backend, seed),
    }
    .map(Ok)
}
