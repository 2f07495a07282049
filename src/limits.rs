//! Size limits checked before anything is allocated (`[problem]` tables, `.npy` headers).
//!
//! Two kinds (docs/cli.md, "Size limits"):
//! - hard limits the kernels impose: they take `batch`, `heads_q`, `heads_kv`, `seq_q` and
//!   `seq_k` as 32-bit `int` and launch `heads_q` and `batch` as grid dimensions y and z
//!   (at most 65535 on CUDA), and the pipelines index keys with `int`, so every dimension
//!   fits `i32`, batch and heads fit 65535 and no tensor holds more than 2^31 - 1 elements;
//! - a memory budget: q, k, v and out together hold at most [`DEFAULT_MAX_ELEMENTS`]
//!   elements unless the environment variable [`MAX_ELEMENTS_ENV`] raises it.

/// Most elements in one tensor (the kernels index with 32-bit `int`).
pub const MAX_TENSOR_ELEMENTS: u64 = i32::MAX as u64;
/// Largest batch and head count (CUDA grid dimensions y and z).
pub const MAX_GRID_DIM: u64 = 65_535;
/// Largest sequence length (`int` in the kernel signatures).
pub const MAX_SEQ: u64 = i32::MAX as u64;
/// Default budget of q, k, v and out elements together (2^28, 1 GiB of f32).
pub const DEFAULT_MAX_ELEMENTS: u64 = 1 << 28;
/// Environment variable that sets the element budget (a positive integer).
pub const MAX_ELEMENTS_ENV: &str = "ATTNFORGE_MAX_ELEMENTS";

/// A size that is over a limit: the field, what is wrong, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeError {
    /// The field (`problem.seq_q`, `q`, ...).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The element budget: `$ATTNFORGE_MAX_ELEMENTS` or [`DEFAULT_MAX_ELEMENTS`].
pub fn max_elements() -> Result<u64, SizeError> {
    match std::env::var(MAX_ELEMENTS_ENV) {
        Err(_) => Ok(DEFAULT_MAX_ELEMENTS),
        Ok(s) => s.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| SizeError {
            field: MAX_ELEMENTS_ENV.into(),
            message: format!("`{s}` is not a positive integer"),
            fix: format!("unset {MAX_ELEMENTS_ENV} or set it to an element count, e.g. {DEFAULT_MAX_ELEMENTS}"),
        }),
    }
}

/// The sizes of one attention problem and the names of their fields in messages.
#[derive(Clone, Copy, Debug)]
pub struct ProblemSizes<'a> {
    /// `(field name, value)` of batch, heads_q, heads_kv, seq_q, seq_k.
    pub fields: [(&'a str, u64); 5],
    /// Head dimension.
    pub dim: u64,
}

/// Product of `xs`, `None` on u64 overflow.
pub fn checked_product(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

fn too_large(field: &str, message: String, fix: String) -> SizeError {
    SizeError {
        field: field.into(),
        message,
        fix,
    }
}

/// The hard limits: every dimension and the element count of q, k, v and out.
pub fn check_hard(p: &ProblemSizes<'_>) -> Result<(), SizeError> {
    let [b, hq, hkv, sq, sk] = p.fields;
    for (name, v) in [b, hq, hkv] {
        if v > MAX_GRID_DIM {
            return Err(too_large(
                name,
                format!("{v} is larger than {MAX_GRID_DIM} (a CUDA grid dimension)"),
                format!("use at most {MAX_GRID_DIM}"),
            ));
        }
    }
    for (name, v) in [sq, sk] {
        if v > MAX_SEQ {
            return Err(too_large(
                name,
                format!("{v} is larger than {MAX_SEQ} (the kernels take lengths as 32-bit int)"),
                format!("use at most {MAX_SEQ}"),
            ));
        }
    }
    for (name, heads, seq) in [(sq.0, hq.1, sq.1), (sk.0, hkv.1, sk.1)] {
        let n = checked_product(&[b.1, heads, seq, p.dim]);
        if n.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
            return Err(too_large(
                name,
                format!(
                    "a tensor of [{}, {heads}, {seq}, {}] holds {} elements, more than {MAX_TENSOR_ELEMENTS} (the kernels index with 32-bit int)",
                    b.1,
                    p.dim,
                    n.map_or("more than 2^64".to_string(), |n| n.to_string())
                ),
                format!("make batch * heads * length * head_dim at most {MAX_TENSOR_ELEMENTS}"),
            ));
        }
    }
    Ok(())
}

/// The hard limits and the element budget of q, k, v and out together.
pub fn check_all(p: &ProblemSizes<'_>) -> Result<(), SizeError> {
    check_hard(p)?;
    let [b, hq, hkv, sq, sk] = p.fields;
    let q = b.1 * hq.1 * sq.1 * p.dim;
    let k = b.1 * hkv.1 * sk.1 * p.dim;
    let total = 2 * q + 2 * k;
    let budget = max_elements()?;
    if total > budget {
        let field = if q >= k { sq.0 } else { sk.0 };
        return Err(too_large(
            field,
            format!(
                "q, k, v and out hold {total} elements together ({:.1} GiB as f32), over the budget of {budget}",
                total as f64 * 4.0 / (1u64 << 30) as f64
            ),
            format!(
                "use smaller sizes, or raise the budget with {MAX_ELEMENTS_ENV}={total} if the machine has the memory (the simulator and the reference take minutes per 10^8 elements)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(b: u64, hq: u64, hkv: u64, sq: u64, sk: u64, d: u64) -> ProblemSizes<'static> {
        ProblemSizes {
            fields: [
                ("batch", b),
                ("heads_q", hq),
                ("heads_kv", hkv),
                ("seq_q", sq),
                ("seq_k", sk),
            ],
            dim: d,
        }
    }

    #[test]
    fn limits_name_the_field() {
        assert!(check_all(&sizes(1, 2, 2, 80, 80, 64)).is_ok());
        assert_eq!(
            check_hard(&sizes(1_000_000, 2, 2, 80, 80, 64))
                .unwrap_err()
                .field,
            "batch"
        );
        assert_eq!(
            check_hard(&sizes(1, 2, 2, 3_000_000_000, 80, 64))
                .unwrap_err()
                .field,
            "seq_q"
        );
        // 2^31 - 1 keys of one head: 2^37 elements, over the per-tensor limit.
        assert_eq!(
            check_hard(&sizes(1, 4, 1, 2, (1 << 31) - 1, 128))
                .unwrap_err()
                .field,
            "seq_k"
        );
        // 4 x 64 x 200000 x 64 = 3.3e9 elements, over 2^31 - 1.
        assert_eq!(
            check_hard(&sizes(4, 64, 64, 200_000, 200_000, 64))
                .unwrap_err()
                .field,
            "seq_q"
        );
        // Under the hard limits, over the default budget of 2^28.
        let e = check_all(&sizes(1, 32, 32, 32768, 32768, 128)).unwrap_err();
        assert!(e.fix.contains(MAX_ELEMENTS_ENV), "{e:?}");
    }
}
