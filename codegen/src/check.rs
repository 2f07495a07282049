//! Validation of specs and runtime problems. Every check runs; all errors are returned,
//! each with its field path, what is wrong and how to fix it.
//!
//! ```
//! use attnforge_codegen::check::validate_spec;
//! use attnforge_codegen::spec::*;
//! let mut spec = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
//! spec.scale = Some(-1.0);
//! let errs = validate_spec(&spec).unwrap_err();
//! assert_eq!(errs[0].path, "scale");
//! ```

use serde::{Deserialize, Serialize};

use crate::masks::DocRule;
pub use crate::masks::MaskParams;
use crate::scores::ScoreParamKind;
use crate::spec::{KernelSpec, Mask, UserFunction, UserSource};

/// One validation error: the field path (`mask.local.left`, `tile.block_m`), the problem
/// and the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{path}: {message} (fix: {fix})")]
pub struct SpecError {
    /// Dotted field path, array elements as `[i]`.
    pub path: String,
    /// What is wrong, with the offending value.
    pub message: String,
    /// What to do instead.
    pub fix: String,
}

impl SpecError {
    /// Build an error.
    pub fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        SpecError {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Collects errors (serde's `Ctxt` pattern).
#[derive(Debug, Default)]
pub(crate) struct Errors(pub Vec<SpecError>);

impl Errors {
    pub(crate) fn push(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(SpecError::new(path, message, fix));
    }
    pub(crate) fn finish(self) -> Result<(), Vec<SpecError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Names a user function's parameters must not take (the device function's own arguments).
const RESERVED_PARAM_NAMES: &[&str] = &["b", "h", "q_pos", "kv_pos", "score"];

/// C/C++/CUDA words a user identifier must not be.
const C_KEYWORDS: &[&str] = &[
    "auto",
    "bool",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "int",
    "long",
    "register",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "class",
    "namespace",
    "template",
    "this",
    "true",
    "false",
    "new",
    "delete",
    "operator",
    "private",
    "public",
    "protected",
    "virtual",
    "inline",
    "constexpr",
    "nullptr",
    "using",
    "typename",
    "min",
    "max",
];

fn check_ident(errs: &mut Errors, path: &str, name: &str, what: &str) {
    let ok_chars = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if !ok_chars {
        errs.push(
            path,
            format!("{what} `{name}` is not a lower-case C identifier"),
            "use lower-case ASCII letters, digits and `_`, starting with a letter",
        );
    } else if C_KEYWORDS.contains(&name) || name.starts_with("af_") || name.starts_with("afsim") {
        errs.push(
            path,
            format!("{what} `{name}` is a reserved word or uses the reserved `af_` prefix"),
            "pick another name",
        );
    }
}

fn check_user_fn(errs: &mut Errors, path: &str, f: &UserFunction) {
    check_ident(errs, &format!("{path}.name"), &f.name, "function name");
    match &f.source {
        UserSource::Body(b) if b.trim().is_empty() => errs.push(
            format!("{path}.source.body"),
            "the function body is empty",
            "give the statements of the function body, ending with a `return`",
        ),
        UserSource::Function(t) if !t.contains(&f.name) => errs.push(
            format!("{path}.source.function"),
            format!("the function text does not define `{}`", f.name),
            "define a `__device__` function with the declared name and the documented signature",
        ),
        _ => {}
    }
    for (i, p) in f.params.iter().enumerate() {
        let pp = format!("{path}.params[{i}].name");
        check_ident(errs, &pp, &p.name, "parameter name");
        if RESERVED_PARAM_NAMES.contains(&p.name.as_str()) {
            errs.push(
                pp.clone(),
                format!(
                    "parameter `{}` shadows an argument of the device function",
                    p.name
                ),
                "rename it (b, h, q_pos, kv_pos and score are taken)",
            );
        }
        if f.params[..i].iter().any(|q| q.name == p.name) {
            errs.push(
                pp,
                format!("parameter `{}` is declared twice", p.name),
                "give each parameter a distinct name",
            );
        }
    }
}

/// The serving layouts (variants.md section 13): block lists are built per sequence on the
/// host (from the mask), so explicit block-sparse lists are refused; the paged cache takes no
/// per-token document ids.
fn check_layout(errs: &mut Errors, spec: &KernelSpec) {
    if spec.layout.is_dense() {
        return;
    }
    if matches!(spec.mask, crate::spec::Mask::BlockSparse { .. }) {
        errs.push(
            "layout",
            format!(
                "layout `{}` is not supported with explicit block-sparse lists: they are per dense (batch, head, query block) row, not per sequence",
                spec.layout.tag()
            ),
            "use layout = \"dense\" (pad the batch), or express the sparsity as a mask predicate (its lists are then built per sequence)",
        );
    }
    if spec.layout.is_paged() && spec.mask.reads_doc() {
        errs.push(
            "layout",
            format!(
                "layout `{}` is not supported with mask `{}`: its per-token ids would be read through the page table",
                spec.layout.tag(),
                spec.mask.tag()
            ),
            "use layout = \"varlen\" (ids packed like the keys) for this mask",
        );
    }
}

/// The statistics outputs (variants.md section 14): their parameters and what they combine with.
fn check_stats(errs: &mut Errors, spec: &KernelSpec) {
    let Some(st) = &spec.stats else { return };
    if let Some(kp) = st.pool {
        if kp % 2 == 0 {
            errs.push(
                "stats.pool",
                format!("the max-pool width must be odd (a window centred on the key): got {kp}"),
                "use an odd width such as 7, or omit `pool` for no pooling",
            );
        }
    }
    if st.top_k == Some(0) {
        errs.push(
            "stats.top_k",
            "top_k must be positive",
            "give the number of keys to select per kv head (e.g. 64), or omit `top_k` for no top_keys",
        );
    }
}

/// Validate a kernel spec. Returns every error found.
pub fn validate_spec(spec: &KernelSpec) -> Result<(), Vec<SpecError>> {
    let mut errs = Errors::default();
    if let Some(s) = spec.scale {
        if !(s.is_finite() && s > 0.0) {
            errs.push(
                "scale",
                format!("scale must be finite and positive: got {s}"),
                "omit it for 1/sqrt(D) or give a positive number",
            );
        }
    }
    if spec.mask.uses_block_lists() {
        for (field, v) in [("q", spec.sparse_block.q), ("k", spec.sparse_block.k)] {
            if !(v.is_power_of_two() && (32..=1024).contains(&v)) {
                errs.push(
                    format!("sparse_block.{field}"),
                    format!("block-list block size must be a power of two in 32..=1024: got {v}"),
                    "use 64 or 128 (FlexAttention's default is 128)",
                );
            }
        }
    }
    check_layout(&mut errs, spec);
    check_stats(&mut errs, spec);
    if spec.mask.lm_infinite_scoring() {
        if let Some(score) = spec.score.short() {
            // The mask's own scoring (rotated scores with a distance limit) replaces the
            // score hook; the reference defines LM-Infinite without a modification.
            errs.push(
                "score",
                format!(
                    "mask `{}` has its own scoring (RoPE with a distance limit) and does not combine with a score modification (`{score}`)",
                    spec.mask.tag()
                ),
                "remove `score` (a score modification combines with the mask of LM-Infinite's allowed set without its scoring; docs/semantics.md section 9)",
            );
        }
    }
    for (path, f) in spec.user_functions() {
        check_user_fn(&mut errs, path, f);
    }
    let fns = spec.user_functions();
    if fns.len() == 2 && fns[0].1.name == fns[1].1.name {
        errs.push(
            "score.user.name",
            format!(
                "the score function and the mask function are both called `{}`",
                fns[1].1.name
            ),
            "give the two device functions distinct names",
        );
    }
    errs.finish()
}

/// A launch problem: shapes plus scalar runtime parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Batch `B`.
    pub batch: usize,
    /// Query heads `Hq`.
    pub heads_q: usize,
    /// Key/value heads `Hkv`.
    pub heads_kv: usize,
    /// Query length `Sq`.
    pub seq_q: usize,
    /// Key length `Sk`.
    pub seq_k: usize,
    /// Scalar mask parameters.
    pub mask: MaskParams,
    /// Softcap value (only with `ScoreMod::Softcap`).
    #[serde(default)]
    pub softcap: Option<f32>,
}

/// The parameter values of `p` against the spec's mask table entry: exactly its
/// parameters (an optional one may be absent; otherwise one error on `mask`), each in its
/// range (an error on `mask.<tag>.<name>`).
fn check_mask_params(errs: &mut Errors, mask: &Mask, p: &MaskParams) {
    let params = mask.def().map_or(&[][..], |d| d.params);
    let tag = mask.tag();
    let unknown: Vec<&str> = p
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !params.iter().any(|d| d.name == *n))
        .collect();
    let missing: Vec<&str> = params
        .iter()
        .filter(|d| !d.optional && p.get(d.name).is_none())
        .map(|d| d.name)
        .collect();
    if !unknown.is_empty() || !missing.is_empty() {
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!("missing {}", missing.join(", ")));
        }
        if !unknown.is_empty() {
            what.push(format!("not its parameters: {}", unknown.join(", ")));
        }
        errs.push(
            "mask",
            format!(
                "mask parameters do not match the spec's mask `{tag}` ({})",
                what.join("; ")
            ),
            if params.is_empty() {
                format!("pass no mask parameters: `{tag}` takes none")
            } else {
                format!(
                    "pass the parameters of `{tag}`: {}",
                    mask.def().map(|d| d.param_list()).unwrap_or_default()
                )
            },
        );
    }
    for d in params {
        if let Some(v) = p.get(d.name) {
            if let Err((message, fix)) = d.check(v) {
                errs.push(format!("mask.{tag}.{}", d.name), message, fix);
            }
        }
    }
}

/// Validate a runtime problem against a spec (host-side input errors).
pub fn validate_problem(spec: &KernelSpec, p: &Problem) -> Result<(), Vec<SpecError>> {
    let mut errs = Errors::default();
    let i32_max = i32::MAX as usize;
    for (f, v) in [
        ("batch", p.batch),
        ("heads_q", p.heads_q),
        ("heads_kv", p.heads_kv),
        ("seq_q", p.seq_q),
        ("seq_k", p.seq_k),
    ] {
        if v == 0 || v > i32_max {
            errs.push(
                f,
                format!("{f} must be in 1..=2^31-1: got {v}"),
                "pass a positive size that fits in a 32-bit int",
            );
        }
    }
    if p.batch > 65535 {
        errs.push(
            "batch",
            format!("batch {} exceeds the grid z limit 65535", p.batch),
            "split the batch into launches of at most 65535",
        );
    }
    if p.heads_q > 65535 {
        errs.push(
            "heads_q",
            format!("heads_q {} exceeds the grid y limit 65535", p.heads_q),
            "split the heads into several launches",
        );
    }
    if p.heads_kv > 0 && p.heads_q % p.heads_kv != 0 {
        errs.push(
            "heads_kv",
            format!(
                "heads_q ({}) is not a multiple of heads_kv ({})",
                p.heads_q, p.heads_kv
            ),
            "use a heads_kv that divides heads_q",
        );
    }
    if !spec.gqa && p.heads_q != p.heads_kv {
        errs.push(
            "heads_kv",
            format!(
                "the kernel is not GQA but heads_q ({}) != heads_kv ({})",
                p.heads_q, p.heads_kv
            ),
            "set `gqa = true` in the spec or pass equal head counts",
        );
    }
    if p.seq_q > p.seq_k && !spec.mask.allows_sq_gt_sk() {
        errs.push(
            "seq_q",
            format!(
                "seq_q ({}) > seq_k ({}) is defined only for the full and causal masks",
                p.seq_q, p.seq_k
            ),
            "pass seq_q <= seq_k (queries are bottom-right aligned)",
        );
    } else if p.seq_q > p.seq_k && !spec.allows_sq_gt_sk() {
        let name = spec.score.short().unwrap_or_default();
        errs.push(
            "seq_q",
            format!(
                "seq_q ({}) > seq_k ({}) is defined only for full and causal without a score \
                 modification, and this kernel applies `{name}`",
                p.seq_q, p.seq_k
            ),
            format!(
                "pass seq_q <= seq_k (queries are bottom-right aligned), or use a kernel \
                 without `{name}`"
            ),
        );
    }
    check_mask_params(&mut errs, &spec.mask, &p.mask);
    match (spec.score.param_of(ScoreParamKind::Scalar), p.softcap) {
        (Some(sp), None) => errs.push(
            sp.name,
            format!(
                "the {} kernel needs a {} value",
                spec.score.def().map_or("", |d| d.tag),
                sp.name
            ),
            sp.fix,
        ),
        (Some(sp), Some(c)) if !(c.is_finite() && c > 0.0) => errs.push(
            sp.name,
            format!("{} must be finite and positive: got {c}", sp.name),
            "pass c > 0",
        ),
        (Some(_), _) => {}
        (None, Some(_)) => errs.push(
            "softcap",
            "a softcap value was given but the spec has no softcap",
            "remove it or use `score = softcap`",
        ),
        (None, None) => {}
    }
    errs.finish()
}

/// Validate a doc-id array for the document-style masks: `seq_k` ids (broadcast over the
/// batch, pass `doc_batch_stride = 0`) or `batch * seq_k` ids (stride `seq_k`); for
/// `share_question` the question (id 0) must be a prefix of every row.
pub fn validate_doc_ids(
    spec: &KernelSpec,
    doc: &[i32],
    batch: usize,
    seq_k: usize,
) -> Result<(), Vec<SpecError>> {
    let mut errs = Errors::default();
    if doc.len() != seq_k && doc.len() != batch * seq_k {
        errs.push(
            "doc",
            format!(
                "{} doc ids given; seq_k ({seq_k}) or batch * seq_k ({}) expected",
                doc.len(),
                batch * seq_k
            ),
            "pass one id per key position, once (broadcast) or per batch entry",
        );
        return errs.finish();
    }
    if spec
        .mask
        .def()
        .is_some_and(|d| d.doc_rule == DocRule::QuestionPrefix)
    {
        for (b, row) in doc.chunks(seq_k.max(1)).enumerate() {
            let prefix = row.iter().take_while(|&&d| d == 0).count();
            if let Some(j) = row[prefix..].iter().position(|&d| d == 0) {
                errs.push(
                    format!("doc[{b}][{}]", prefix + j),
                    format!("doc id 0 (the question) reappears at position {} after the question prefix of length {prefix}", prefix + j),
                    "put the question (id 0) first and give the answers ids other than 0",
                );
            }
        }
    }
    errs.finish()
}
