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

use crate::spec::{KernelSpec, Mask, ScoreMod, UserFunction, UserSource};

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

/// Scalar runtime parameters of a mask (arrays such as doc ids and block lists are
/// checked by their own builders). The variant must match the spec's mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskParams {
    /// No scalar parameters (full, causal, document masks, predicates, block-sparse).
    None,
    /// `local(left, right)`; negative = unbounded.
    Local {
        /// Keys allowed to the left of the query position.
        left: i64,
        /// Keys allowed to the right.
        right: i64,
    },
    /// `prefix_lm(P)`.
    PrefixLm {
        /// Bidirectional prefix length `P`.
        prefix_len: i64,
    },
    /// `global_local(w, G)`.
    GlobalLocal {
        /// Window `w` (>= 0).
        window: i64,
        /// Global tokens `G` (>= 0).
        global_tokens: i64,
    },
    /// `block_causal_document(doc, Bc)`.
    BlockCausalDocument {
        /// Block length `Bc` (>= 1).
        doc_block: i64,
    },
    /// `lambda_mask(G, L)`.
    LambdaMask {
        /// Global tokens `G`.
        global_tokens: i64,
        /// Local window `L`.
        local_window: i64,
    },
    /// LM-Infinite (section 5).
    LmInfinite {
        /// Global tokens `G`.
        global_tokens: i64,
        /// Local window `L`.
        local_window: i64,
        /// Distance limit `Dlim`.
        dist_limit: i64,
        /// RoPE base.
        rope_theta: f32,
    },
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

fn mask_params_match(mask: &Mask, p: &MaskParams) -> bool {
    matches!(
        (mask, p),
        (Mask::Local, MaskParams::Local { .. })
            | (Mask::PrefixLm, MaskParams::PrefixLm { .. })
            | (Mask::GlobalLocal, MaskParams::GlobalLocal { .. })
            | (
                Mask::BlockCausalDocument,
                MaskParams::BlockCausalDocument { .. }
            )
            | (Mask::LambdaMask, MaskParams::LambdaMask { .. })
            | (Mask::LmInfinite, MaskParams::LmInfinite { .. })
            | (
                Mask::Full
                    | Mask::Causal
                    | Mask::Document
                    | Mask::CausalDocument
                    | Mask::ShareQuestion
                    | Mask::Predicate(_)
                    | Mask::BlockSparse { .. },
                MaskParams::None
            )
    )
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
    if !mask_params_match(&spec.mask, &p.mask) {
        errs.push(
            "mask",
            format!(
                "mask parameters {:?} do not match the spec's mask `{}`",
                p.mask,
                spec.mask.tag()
            ),
            format!("pass the parameters of `{}`", spec.mask.tag()),
        );
    }
    let i32r = |v: i64| (i32::MIN as i64..=i32::MAX as i64).contains(&v);
    match &p.mask {
        MaskParams::Local { left, right } => {
            for (f, v) in [("left", left), ("right", right)] {
                if !i32r(*v) {
                    errs.push(
                        format!("mask.local.{f}"),
                        format!("{f} = {v} does not fit in a 32-bit int"),
                        "use a negative value for an unbounded side",
                    );
                }
            }
        }
        MaskParams::PrefixLm { prefix_len } => {
            if *prefix_len < 0 || !i32r(*prefix_len) {
                errs.push(
                    "mask.prefix_lm.prefix_len",
                    format!("prefix length must be in 0..2^31: got {prefix_len}"),
                    "pass the number of bidirectional prefix tokens",
                );
            }
        }
        MaskParams::GlobalLocal {
            window,
            global_tokens,
        } => {
            for (f, v) in [("window", window), ("global_tokens", global_tokens)] {
                if *v < 0 || !i32r(*v) {
                    errs.push(
                        format!("mask.global_local.{f}"),
                        format!("{f} must be in 0..2^31: got {v}"),
                        "pass a non-negative count",
                    );
                }
            }
        }
        MaskParams::BlockCausalDocument { doc_block } => {
            if *doc_block < 1 || !i32r(*doc_block) {
                errs.push(
                    "mask.block_causal_document.doc_block",
                    format!("block length must be >= 1: got {doc_block}"),
                    "pass the block length Bc (e.g. 64)",
                );
            }
        }
        MaskParams::LambdaMask {
            global_tokens,
            local_window,
        } => {
            for (f, v) in [
                ("global_tokens", global_tokens),
                ("local_window", local_window),
            ] {
                if *v < 0 || !i32r(*v) {
                    errs.push(
                        format!("mask.lambda_mask.{f}"),
                        format!("{f} must be in 0..2^31: got {v}"),
                        "pass a non-negative count",
                    );
                }
            }
        }
        MaskParams::LmInfinite {
            global_tokens,
            local_window,
            dist_limit,
            rope_theta,
        } => {
            for (f, v) in [
                ("global_tokens", global_tokens),
                ("local_window", local_window),
                ("dist_limit", dist_limit),
            ] {
                if *v < 0 || !i32r(*v) {
                    errs.push(
                        format!("mask.lm_infinite.{f}"),
                        format!("{f} must be in 0..2^31: got {v}"),
                        "pass a non-negative count",
                    );
                }
            }
            if !(rope_theta.is_finite() && *rope_theta > 1.0) {
                errs.push(
                    "mask.lm_infinite.rope_theta",
                    format!("RoPE base must be finite and > 1: got {rope_theta}"),
                    "use 10000 (the default)",
                );
            }
        }
        MaskParams::None => {}
    }
    match (&spec.score, p.softcap) {
        (ScoreMod::Softcap, None) => errs.push(
            "softcap",
            "the softcap kernel needs a softcap value",
            "pass softcap = c > 0 (e.g. 30 or 50)",
        ),
        (ScoreMod::Softcap, Some(c)) if !(c.is_finite() && c > 0.0) => errs.push(
            "softcap",
            format!("softcap must be finite and positive: got {c}"),
            "pass c > 0",
        ),
        (ScoreMod::Softcap, _) => {}
        (_, Some(_)) => errs.push(
            "softcap",
            "a softcap value was given but the spec has no softcap",
            "remove it or use `score = softcap`",
        ),
        (_, None) => {}
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
    if matches!(spec.mask, Mask::ShareQuestion) {
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
