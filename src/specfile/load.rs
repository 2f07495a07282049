//! The static loader: spec-file text to a validated [`SpecFile`], one function per part
//! of the file (head dimension, mask, score, `[params]`, `[problem]`, `[tune]`), checked
//! in the order the file is read so the first error reported is the first in the file.

use std::path::{Path, PathBuf};

use attnforge_dsl::FnKind;
use attnforge_runtime::codegen::backward::backward_supported;
use attnforge_runtime::codegen::check::validate_spec;
use attnforge_runtime::codegen::masks::BuiltinMask;
use attnforge_runtime::codegen::scores::{self, ScoreParamKind};
use attnforge_runtime::codegen::spec::{BlockSize, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::Arch;

use super::any::is_dynamic_text;
use super::error::{field_err, FieldErr};
use super::params::{mask_params, split_params, user_fn, user_values};
use super::raw::{toml_field, MaskRaw, ParamsRaw, Raw, ScoreRaw, TuneRaw};
use super::{default_seq, DocSource, HostFn, Problem, SpecFile, SpecFileError, Tune};

impl SpecFile {
    /// Parse spec-file text (`path` is used in errors and to resolve relative file names).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<SpecFile, SpecFileError> {
        let file = path.map_or("<input>".to_string(), |p| p.display().to_string());
        let at = |(field, message, fix): FieldErr| SpecFileError {
            file: file.clone(),
            field,
            message,
            fix,
        };
        if is_dynamic_text(text) {
            return Err(at(field_err(
                "family",
                "`family` declares a data-dependent pipeline (landmark, hax, cca, topk, recycled, lse_merge, longheads), not a static kernel",
                "load it with attnforge::specfile::AnySpecFile::load or DynSpecFile::load (the CLI accepts both kinds)",
            )));
        }
        let raw: Raw = toml::from_str(text).map_err(|e| {
            at(field_err(
                toml_field(&e, text),
                e.to_string().replace('\n', " ").trim(),
                "see docs/spec-files.md for the fields and their types",
            ))
        })?;
        let head_dim = head_dim(raw.head_dim).map_err(at)?;
        let (mask, host_mask) = mask_of(raw.mask).map_err(at)?;
        let (score, host_score) = score_of(raw.score).map_err(at)?;
        check_sparse_block(raw.sparse_block, &mask).map_err(at)?;
        let spec = KernelSpec {
            dtype: raw.dtype,
            head_dim,
            gqa: raw.gqa,
            mask,
            score,
            scale: raw.scale,
            sparse_block: raw.sparse_block.unwrap_or_default(),
            layout: raw.layout,
            stats: raw.stats,
        };
        validate(&spec).map_err(at)?;
        let (p, values) = split_params(raw.params).map_err(at)?;
        let mask_params = mask_params(&spec.mask, &values).map_err(at)?;
        check_score_params(&spec, &p).map_err(at)?;
        let doc = doc_source(&spec, &p, path).map_err(at)?;
        if p.block_lists.is_some() && !spec.mask.uses_block_lists() {
            return Err(at(field_err(
                "params.block_lists",
                format!(
                    "block lists given but mask `{}` does not use them",
                    spec.mask.tag()
                ),
                "remove [params.block_lists]",
            )));
        }
        let user = user_values(&spec, &p.user).map_err(at)?;
        let problem = problem_of(raw.problem, &spec).map_err(at)?;
        let tune = tune_of(raw.tune, &spec).map_err(at)?;
        check_backward(raw.backward, &spec).map_err(at)?;
        Ok(SpecFile {
            path: path.map(Path::to_path_buf),
            description: raw.description,
            spec,
            mask_params,
            softcap: p.softcap,
            alibi_slopes: p.alibi_slopes,
            doc,
            block_lists: p.block_lists,
            user,
            host_mask,
            host_score,
            problem,
            tune,
            backward: raw.backward,
        })
    }
}

fn head_dim(d: u32) -> Result<HeadDim, FieldErr> {
    match d {
        64 => Ok(HeadDim::D64),
        128 => Ok(HeadDim::D128),
        256 => Ok(HeadDim::D256),
        d => Err(field_err(
            "head_dim",
            format!("unsupported head dimension {d}"),
            "use 64, 128 or 256",
        )),
    }
}

/// Every mask kind a spec file accepts (the mask table's tags, then the function kinds).
fn mask_kinds() -> String {
    format!("{}, predicate, block_sparse", BuiltinMask::tag_list())
}

/// A mask named by a plain string (a table tag or `block_sparse` without a function).
fn simple_mask(n: &str) -> Option<Mask> {
    match n {
        "block_sparse" => Some(Mask::BlockSparse { mask: None }),
        _ => Mask::builtin(n),
    }
}

/// The `mask` key: a tag, or a `[mask]` table with a kind and a function.
fn mask_of(raw: MaskRaw) -> Result<(Mask, Option<HostFn>), FieldErr> {
    let t = match raw {
        MaskRaw::Name(n) if n == "predicate" => {
            return Err(field_err(
                "mask",
                "mask `predicate` needs its function, and a plain `mask = \"predicate\"` string has none",
                "replace the line with a [mask] table: `[mask]` `kind = \"predicate\"` and `[mask.function]` `source = '''fn name(q: i64, kv: i64) -> bool { .. }'''` (docs/spec-files.md)",
            ))
        }
        MaskRaw::Name(n) => {
            let m = simple_mask(&n).ok_or_else(|| {
                field_err(
                    "mask",
                    format!("unknown mask `{n}`"),
                    format!(
                        "use one of: {} (predicate and block_sparse with a [mask.function] table)",
                        mask_kinds()
                    ),
                )
            })?;
            return Ok((m, None));
        }
        MaskRaw::Table(t) => t,
    };
    let kind = t.kind.as_deref().unwrap_or(if t.function.is_some() {
        "predicate"
    } else {
        ""
    });
    let func = match &t.function {
        Some(f) => Some(user_fn(&f.source, FnKind::Mask, "mask.function.source")?),
        None => None,
    };
    match (kind, func) {
        ("predicate", Some((uf, h))) => Ok((Mask::Predicate(uf), Some(h))),
        ("predicate", None) => Err(field_err(
            "mask.function",
            "a predicate mask needs its function",
            "add [mask.function] with `source = '''fn name(q: i64, kv: i64) -> bool { .. }'''`",
        )),
        ("block_sparse", f) => {
            let (m, h) = match f {
                Some((uf, h)) => (Some(uf), Some(h)),
                None => (None, None),
            };
            Ok((Mask::BlockSparse { mask: m }, h))
        }
        (k, None) if simple_mask(k).is_some() => Ok((simple_mask(k).expect("checked"), None)),
        (k, _) => Err(field_err(
            "mask.kind",
            format!("mask kind `{k}` does not take a function (or is unknown)"),
            format!(
                "use `predicate` or `block_sparse` with [mask.function]; kinds: {}",
                mask_kinds()
            ),
        )),
    }
}

/// The `score` key: absent, a table tag, or a `[score]` table with a user function.
fn score_of(raw: Option<ScoreRaw>) -> Result<(ScoreMod, Option<HostFn>), FieldErr> {
    match raw {
        None => Ok((ScoreMod::None, None)),
        Some(ScoreRaw::Name(n)) => {
            let s = ScoreMod::builtin(&n).ok_or_else(|| {
                field_err(
                    "score",
                    format!("unknown score modification `{n}`"),
                    format!("use {}, or a [score.function] table", scores::tag_list()),
                )
            })?;
            Ok((s, None))
        }
        Some(ScoreRaw::Table(t)) => {
            if let Some(k) = t.kind.as_deref().filter(|k| *k != "user") {
                return Err(field_err(
                    "score.kind",
                    format!("score kind `{k}` does not take a function"),
                    "use kind = \"user\" (or omit kind) with [score.function]",
                ));
            }
            let f = t.function.ok_or_else(|| {
                field_err(
                    "score.function",
                    "a user score needs its function",
                    "add [score.function] with `source = '''fn name(score: f32, q: i64, kv: i64) -> f32 { .. }'''`",
                )
            })?;
            let (uf, h) = user_fn(&f.source, FnKind::Score, "score.function.source")?;
            Ok((ScoreMod::User(uf), Some(h)))
        }
    }
}

fn check_sparse_block(block: Option<BlockSize>, mask: &Mask) -> Result<(), FieldErr> {
    match block {
        Some(b) if !mask.uses_block_lists() => Err(field_err(
            "sparse_block",
            format!(
                "sparse_block = {{ q = {}, k = {} }} is given but mask `{}` uses no block lists",
                b.q,
                b.k,
                mask.tag()
            ),
            "remove `sparse_block` (it is the block size of the document, predicate and block_sparse masks)",
        )),
        _ => Ok(()),
    }
}

/// [`validate_spec`] as one error: the first error's field and fix, every message.
fn validate(spec: &KernelSpec) -> Result<(), FieldErr> {
    validate_spec(spec).map_err(|errs| {
        let first = &errs[0];
        field_err(
            first.path.to_string(),
            errs.iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
            first.fix.clone(),
        )
    })
}

/// The score's parameters in `[params]`: the scalar exactly when the score has one, slopes
/// only with a per-head score.
fn check_score_params(spec: &KernelSpec, p: &ParamsRaw) -> Result<(), FieldErr> {
    match (spec.score.param_of(ScoreParamKind::Scalar), p.softcap) {
        (None, Some(_)) => {
            return Err(field_err(
                "params.softcap",
                "softcap is given but the score is not `softcap`",
                "remove it or set score = \"softcap\"",
            ))
        }
        (Some(sp), None) => {
            return Err(field_err(
                format!("params.{}", sp.name),
                format!("the {} score needs its value ({})", sp.name, sp.doc),
                format!("add `{} = {:.1}` to [params]", sp.name, sp.default),
            ))
        }
        _ => {}
    }
    if spec.score.param_of(ScoreParamKind::PerHead).is_none() && p.alibi_slopes.is_some() {
        return Err(field_err(
            "params.alibi_slopes",
            "slopes given but the score is not `alibi`",
            "remove them or set score = \"alibi\"",
        ));
    }
    Ok(())
}

/// Where the document ids come from: at most one of `doc`, `doc_segments`, `doc_file`
/// (relative to the spec file), and only for a mask that reads them.
fn doc_source(
    spec: &KernelSpec,
    p: &ParamsRaw,
    path: Option<&Path>,
) -> Result<Option<DocSource>, FieldErr> {
    let docs: Vec<DocSource> = [
        p.doc.clone().map(DocSource::Ids),
        p.doc_segments.clone().map(DocSource::Segments),
        p.doc_file.as_ref().map(|f| {
            let fp = PathBuf::from(f);
            DocSource::File(match path.and_then(Path::parent) {
                Some(dir) if fp.is_relative() => dir.join(fp),
                _ => fp,
            })
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if docs.len() > 1 {
        return Err(field_err(
            "params.doc",
            "more than one of doc, doc_segments, doc_file",
            "give the document ids one way",
        ));
    }
    if !spec.mask.reads_doc() && !docs.is_empty() {
        return Err(field_err(
            "params.doc",
            format!(
                "document ids given but mask `{}` does not use them",
                spec.mask.tag()
            ),
            "remove them",
        ));
    }
    Ok(docs.into_iter().next())
}

/// The `[problem]` table with its defaults (heads by `gqa`), within the hard size limits.
fn problem_of(raw: Option<Problem>, spec: &KernelSpec) -> Result<Problem, FieldErr> {
    let mut problem = raw.unwrap_or(Problem {
        batch: 1,
        heads_q: 0,
        heads_kv: 0,
        seq_q: default_seq(),
        seq_k: default_seq(),
        seed: 1,
    });
    if problem.heads_q == 0 {
        problem.heads_q = if spec.gqa { 4 } else { 2 };
    }
    if problem.heads_kv == 0 {
        problem.heads_kv = if spec.gqa { 1 } else { problem.heads_q };
    }
    problem_limits(&problem, spec.head_dim.get())?;
    Ok(problem)
}

/// The hard size limits (crate::limits) of a `[problem]` table, checked before `check`
/// allocates its random inputs.
pub(crate) fn problem_limits(p: &Problem, head_dim: usize) -> Result<(), FieldErr> {
    let sizes = crate::limits::ProblemSizes {
        fields: [
            ("problem.batch", p.batch as u64),
            ("problem.heads_q", p.heads_q as u64),
            ("problem.heads_kv", p.heads_kv as u64),
            ("problem.seq_q", p.seq_q as u64),
            ("problem.seq_k", p.seq_k as u64),
        ],
        dim: head_dim as u64,
    };
    crate::limits::check_hard(&sizes).map_err(|e| (e.field, e.message, e.fix))
}

/// `backward = true` only for a variant the backward kernels cover.
fn check_backward(backward: bool, spec: &KernelSpec) -> Result<(), FieldErr> {
    if !backward {
        return Ok(());
    }
    backward_supported(spec).map_err(|errs| {
        field_err(
            "backward",
            format!(
                "`backward = true` but the backward kernels do not cover this variant: {}",
                errs.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "remove `backward = true` (or {})",
                errs.first()
                    .map_or("change the variant", |e| e.fix.as_str())
            ),
        )
    })
}

/// The `[tune]` table: the architecture and a tile valid for the spec on it.
fn tune_of(raw: Option<TuneRaw>, spec: &KernelSpec) -> Result<Tune, FieldErr> {
    let tune = match raw {
        None => Tune {
            arch: Arch::Sm80,
            tile: None,
            space: Vec::new(),
            backward_tile: None,
        },
        Some(t) => Tune {
            arch: match t.arch.as_deref() {
                None | Some("sm_80") => Arch::Sm80,
                Some("sm_90") => Arch::Sm90,
                Some(a) => {
                    return Err(field_err(
                        "tune.arch",
                        format!("unknown architecture `{a}`"),
                        "use \"sm_80\" or \"sm_90\"",
                    ))
                }
            },
            tile: t.tile,
            space: t.space,
            backward_tile: None,
        },
    };
    if let Some(t) = &tune.tile {
        t.valid(spec, tune.arch).map_err(|e| {
            field_err(
                "tune.tile",
                e.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                "pick a valid tile (block_m/block_n multiples of 16, see `attnforge emit --help`)",
            )
        })?;
    }
    Ok(tune)
}
