//! `attnforge check --stats`: the statistics outputs (variants.md section 14) of static
//! variants on the simulator, against `attnforge_reference::attention_stats` by the oracle of
//! section 0 (docs/statistics.md).

use attnforge::codegen::check::validate_spec;
use attnforge::codegen::shape::Shape;
use attnforge::codegen::spec::{DType, StatReduce, StatsSpec};
use attnforge::exec::ExecError;
use attnforge::exec_stats::{check_stats, StatsReport};
use attnforge::reference::Element;
use attnforge::sim::SimElem;
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use half::{bf16, f16};

use super::check::{inputs, Verdict};
use super::check_problems::{self as problems, CheckCase};
use super::variant::Variant;
use super::CliError;

/// The statistics parameters of a problem (a spec file's own `stats` wins): every problem
/// asks for something else, without recompiling (they are the follow-up kernel's arguments).
fn params(label: &str) -> StatsSpec {
    let (reduce, pool, top_k) = if label.starts_with("rectangular") {
        (StatReduce::Max, Some(5), 16)
    } else if label.starts_with("sq > sk") {
        (StatReduce::Sum, Some(3), 8)
    } else if label.starts_with("large magnitude") {
        (StatReduce::Max, Some(7), 8)
    } else {
        (StatReduce::Sum, None, 8)
    };
    StatsSpec {
        reduce,
        pool,
        top_k: Some(top_k),
    }
}

/// The problems of a catalog entry: its own, the rectangular one as GQA (Hq 6, Hkv 2; lengths
/// off the tile grid), `Sq > Sk` where defined (causal: empty rows) and large magnitudes.
fn cases(sf: &SpecFile) -> Vec<CheckCase> {
    if sf.path.is_some() {
        let mut f = sf.clone();
        f.spec.stats = f.spec.stats.or(Some(params("")));
        return vec![CheckCase {
            label: "the spec file's problem".into(),
            file: f,
            magnitude: 1.0,
        }];
    }
    let mut base = sf.clone();
    base.spec.stats = Some(StatsSpec::default());
    let mut seen_rect = false;
    let mut out = Vec::new();
    for mut c in problems::catalog_cases(&base) {
        let keep = ["catalog problem", "sq > sk", "large magnitude"]
            .iter()
            .any(|l| c.label.starts_with(l))
            || (c.label.starts_with("rectangular") && !seen_rect);
        if !keep {
            continue;
        }
        if c.label.starts_with("rectangular") {
            seen_rect = true;
            if !c.file.spec.gqa {
                let p = c.file.problem;
                let s = Shape {
                    batch: p.batch,
                    heads_q: 6,
                    heads_kv: 2,
                    seq_q: p.seq_q,
                    seq_k: p.seq_k,
                };
                let mp = c.file.mask_params.clone();
                c.file = problems::resized(&c.file, s);
                c.file.mask_params = mp;
                c.file.spec = c.file.spec.clone().with_gqa();
                c.label = format!("rectangular gqa twin: {}", c.label);
            }
        }
        c.file.spec.stats = Some(params(&c.label));
        out.push(c);
    }
    out
}

fn run_case<T: Element + SimElem>(
    c: &CheckCase,
    seed: u64,
) -> Result<Result<StatsReport, String>, CliError> {
    let f = &c.file;
    let tile = f.tile().map_err(CliError::input)?;
    let mut rp = f
        .run_params(f.problem.seq_k, None)
        .map_err(CliError::input)?;
    specfile::catalog_twins(f, &mut rp);
    if let Some(l) = problems::host_lists(&f.spec, &rp, f.problem.shape()) {
        rp.block_lists = Some(l);
    }
    let x = inputs::<T>(f, seed, c.magnitude);
    match check_stats(&f.spec, &tile, &x, &rp) {
        Ok(r) => Ok(Ok(r)),
        Err(e @ (ExecError::Spec(_) | ExecError::Reference(_))) => {
            Err(CliError::input(format!("{}: {e}", f.location())))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The statistics verdict of one variant, or why it has no statistics outputs (SKIP).
pub(super) fn check_stats_any(
    f: &AnySpecFile,
    seed: Option<u64>,
) -> Result<Result<Verdict, String>, CliError> {
    let AnySpecFile::Static(sf) = f else {
        return Ok(Err(
            "data-dependent pipelines have no statistics outputs".into()
        ));
    };
    let mut probe = sf.spec.clone();
    probe.stats = probe.stats.or(Some(StatsSpec::default()));
    if let Err(e) = validate_spec(&probe) {
        let why: Vec<String> = e.iter().map(ToString::to_string).collect();
        return Ok(Err(why.join("; ")));
    }
    let seed = seed.unwrap_or(sf.problem.seed);
    let cases = cases(sf);
    let n = cases.len();
    let mut name = String::new();
    let (mut worst, mut failures) = (None::<Worst>, Vec::new());
    for (i, c) in cases.iter().enumerate() {
        let seed = seed.wrapping_add(i as u64);
        if name.is_empty() {
            let tile = c.file.tile().map_err(CliError::input)?;
            name = attnforge::codegen::name::canonical_name_with_tile(&c.file.spec, &tile);
        }
        let r = match c.file.spec.dtype {
            DType::F32 => run_case::<f32>(c, seed),
            DType::F16 => run_case::<f16>(c, seed),
            DType::Bf16 => run_case::<bf16>(c, seed),
        }?;
        match r {
            Ok(r) => worst = Some(Worst::of(&r).max(worst)),
            Err(detail) => failures.push(format!("[{}] {detail}", c.label)),
        }
    }
    let mut v = match (worst, failures.is_empty()) {
        (Some(w), true) => {
            let mut v = Verdict::passed(name, &w.close, w.json());
            v.detail = w.line();
            v
        }
        _ => Verdict::failed(
            name,
            format!(
                "{} of {n} problems failed: {}",
                failures.len(),
                failures.join("; ")
            ),
        ),
    };
    v.problems = n;
    Ok(Ok(v))
}

/// The statistics parameters of a serving-layout check (`check --stats --layout
/// varlen|paged`; a spec file's own `stats` wins).
pub(super) fn serving_params() -> StatsSpec {
    params("rectangular")
}

/// The worst figures over the problems of a variant.
pub(super) struct Worst {
    close: attnforge::reference::CloseReport,
    mass: (f64, f64),
    score: (f64, f64),
    near: usize,
    entries: usize,
}

impl Worst {
    pub(super) fn of(r: &StatsReport) -> Self {
        Worst {
            close: r.close,
            mass: (r.key_mass.max_err, r.key_mass.ratio),
            score: (r.key_score.max_err, r.key_score.ratio),
            near: r.top_near_ties,
            entries: r.top_entries,
        }
    }
    pub(super) fn max(mut self, o: Option<Worst>) -> Self {
        let Some(o) = o else { return self };
        let m = |a: (f64, f64), b: (f64, f64)| (a.0.max(b.0), a.1.max(b.1));
        self.mass = m(self.mass, o.mass);
        self.score = m(self.score, o.score);
        self.near += o.near;
        self.entries += o.entries;
        self.close.out.max_err = self.close.out.max_err.max(o.close.out.max_err);
        self.close.out.ratio = self.close.out.ratio.max(o.close.out.ratio);
        self.close.lse.max_err = self.close.lse.max_err.max(o.close.lse.max_err);
        self
    }
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "key_mass_max_err": self.mass.0, "key_mass_ratio_to_naive": self.mass.1,
            "key_score_max_err": self.score.0, "key_score_ratio_to_naive": self.score.1,
            "top_keys_near_ties": self.near, "top_keys_entries": self.entries,
        })
    }
    pub(super) fn line(&self) -> String {
        format!(
            "key_mass err {:.2e} (x{:.2} naive)  key_score err {:.2e} (x{:.2} naive)  top_keys near-ties {}/{}  out err {:.2e}",
            self.mass.0, self.mass.1, self.score.0, self.score.1, self.near, self.entries, self.close.out.max_err
        )
    }
}
