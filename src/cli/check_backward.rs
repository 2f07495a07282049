//! `attnforge check --backward`: the backward kernels (variants.md section 12) of each static
//! spec against the reference's analytic backward, gradient by gradient, with the tolerance
//! rule of section 0 (dq, dk, dv and the score parameter's gradient).
//!
//! A catalog entry runs three problems of its forward suite (check_problems.rs): the catalog
//! problem, the first rectangular problem (`Sq < Sk`, lengths that are not tile multiples,
//! GQA where the entry has it, non-default parameters) and the first large-magnitude problem,
//! the latter two with a `dlse` input. A spec file runs its own `[problem]`. The
//! data-dependent families and the variants the backward kernels do not cover yet (LM-Infinite,
//! user score functions) fail with the reason. Simulator or GPU.

use attnforge::codegen::backward::backward_supported;
use attnforge::codegen::spec::DType;
use attnforge::exec::{Backend, ExecError, Inputs};
use attnforge::exec_backward::{check_backward, GradCheck, Upstream};
use attnforge::reference::{Element, Shape4, Tensor4};
use attnforge::sim::SimElem;
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use half::{bf16, f16};

use super::check::Verdict;
use super::check_problems as problems;
use super::common::random_values;
use super::variant::Variant;
use super::CliError;

/// The verdict of one spec's backward.
pub(super) fn check_backward_any(
    f: &AnySpecFile,
    backend: &Backend,
    seed: Option<u64>,
) -> Result<Verdict, CliError> {
    let name = format!("{}_bwd", f.canonical_name());
    let AnySpecFile::Static(sf) = f else {
        return Ok(Verdict::failed(
            name,
            "data-dependent families have no backward (variants.md section 12 scopes it to \
             sections 1-5 and 11)"
                .into(),
        ));
    };
    if let Err(e) = backward_supported(&sf.spec) {
        let why: Vec<String> = e
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        return Ok(Verdict::failed(name, why.join("; ")));
    }
    let cases = if sf.path.is_none() {
        let all = problems::catalog_cases(sf);
        let large = all.iter().position(|c| c.magnitude == problems::LARGE);
        let mut picked: Vec<usize> = [Some(0), (all.len() > 1).then_some(1), large]
            .into_iter()
            .flatten()
            .collect();
        picked.dedup();
        picked
            .into_iter()
            .map(|i| (all[i].label.clone(), all[i].file.clone(), all[i].magnitude))
            .collect()
    } else {
        vec![("the spec file's problem".to_string(), (**sf).clone(), 1.0)]
    };
    let seed = seed.unwrap_or(sf.problem.seed);
    let n = cases.len();
    let mut failures = Vec::new();
    let mut worst: Vec<GradCheck> = Vec::new();
    for (i, (label, file, magnitude)) in cases.iter().enumerate() {
        let seed = seed.wrapping_add(i as u64);
        let with_dlse = i > 0;
        let r = match file.spec.dtype {
            DType::F32 => case::<f32>(file, *magnitude, with_dlse, backend, seed),
            DType::F16 => case::<f16>(file, *magnitude, with_dlse, backend, seed),
            DType::Bf16 => case::<bf16>(file, *magnitude, with_dlse, backend, seed),
        }?;
        match r {
            Ok(checks) => {
                for c in checks {
                    match worst.iter_mut().find(|w| w.name == c.name) {
                        Some(w)
                            if c.max_err / c.bound.max(f64::MIN_POSITIVE)
                                > w.max_err / w.bound.max(f64::MIN_POSITIVE) =>
                        {
                            *w = c
                        }
                        Some(_) => {}
                        None => worst.push(c),
                    }
                }
            }
            Err(detail) => failures.push(format!("[{label}] {detail}")),
        }
    }
    let mut v = if failures.is_empty() {
        let mut v = Verdict::failed(name, String::new());
        v.ok = true;
        v.detail = worst
            .iter()
            .map(|c| format!("{} {:.2e}/{:.2e}", c.name, c.max_err, c.bound))
            .collect::<Vec<_>>()
            .join("  ");
        v.out_err = worst.iter().map(|c| c.max_err).fold(0.0, f64::max);
        v.out_ratio = worst
            .iter()
            .map(|c| c.max_err / c.bound.max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max);
        v.lse_err = 0.0;
        v
    } else {
        Verdict::failed(
            name,
            format!(
                "{} of {n} problems failed: {}",
                failures.len(),
                failures.join("; ")
            ),
        )
    };
    v.problems = n;
    Ok(v)
}

/// One problem: random q, k, v, dO (and dlse) in `[-magnitude, magnitude)`.
fn case<T: Element + SimElem>(
    sf: &SpecFile,
    magnitude: f32,
    with_dlse: bool,
    backend: &Backend,
    seed: u64,
) -> Result<Result<Vec<GradCheck>, String>, CliError> {
    let tile = sf.tile().map_err(CliError::input)?;
    let mut rp = sf
        .run_params(sf.problem.seq_k, None)
        .map_err(CliError::input)?;
    specfile::catalog_twins(sf, &mut rp);
    if let Some(l) = problems::host_lists(&sf.spec, &rp, sf.problem.shape()) {
        rp.block_lists = Some(l);
    }
    let p = sf.problem;
    let d = sf.spec.head_dim.get();
    let mk = |h, s, stream, amp: f32| {
        let shape = Shape4::new(p.batch, h, s, d);
        let v = random_values(shape.numel(), seed, stream);
        Tensor4::from_vec(shape, v.into_iter().map(|x| T::from_f32(x * amp)).collect())
            .expect("sized")
    };
    let x = Inputs::new(
        mk(p.heads_q, p.seq_q, 1, magnitude),
        mk(p.heads_kv, p.seq_k, 2, magnitude),
        mk(p.heads_kv, p.seq_k, 3, magnitude),
    );
    let dout = mk(p.heads_q, p.seq_q, 4, 1.0);
    let dlse = random_values(p.batch * p.heads_q * p.seq_q, seed, 5);
    let up = Upstream {
        dout: &dout,
        dlse: with_dlse.then_some(dlse.as_slice()),
    };
    match check_backward(&sf.spec, &tile, &sf.backward_tile(), &x, up, &rp, backend) {
        Ok((_, checks)) => Ok(Ok(checks)),
        Err(ExecError::Mismatch { detail, .. }) => Ok(Err(detail)),
        Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
            Err(CliError::input(format!("{}: {e}", sf.location())))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}
