//! Emit: lowered function -> CUDA text (guarded helper block + `__device__` function).

use crate::lower::{CExpr, CFn, CStmt};
use crate::FnKind;
use std::fmt::Write;

/// Helpers shared by every translated function; guarded so several functions can be pasted
/// into one `.cu`. They give Rust's semantics where C's differ (float-to-int casts saturate,
/// NaN -> 0; integer `abs` wraps).
pub const HELPERS: &str = r#"#ifndef AF_DSL_HELPERS
#define AF_DSL_HELPERS
// attnforge-dsl helpers: Rust semantics for integer min/max/abs and float->int `as` casts.
#ifdef __CUDA_ARCH__
#define AF_DSL_INF_F __int_as_float(0x7f800000)
#else
#define AF_DSL_INF_F __builtin_huge_valf()
#endif
static __device__ __forceinline__ int af_dsl_min(int a, int b) { return a < b ? a : b; }
static __device__ __forceinline__ unsigned af_dsl_min(unsigned a, unsigned b) { return a < b ? a : b; }
static __device__ __forceinline__ long long af_dsl_min(long long a, long long b) { return a < b ? a : b; }
static __device__ __forceinline__ unsigned long long af_dsl_min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static __device__ __forceinline__ int af_dsl_max(int a, int b) { return a > b ? a : b; }
static __device__ __forceinline__ unsigned af_dsl_max(unsigned a, unsigned b) { return a > b ? a : b; }
static __device__ __forceinline__ long long af_dsl_max(long long a, long long b) { return a > b ? a : b; }
static __device__ __forceinline__ unsigned long long af_dsl_max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static __device__ __forceinline__ int af_dsl_abs(int a) { return a < 0 ? (int)(0u - (unsigned)a) : a; }
static __device__ __forceinline__ long long af_dsl_abs(long long a) { return a < 0 ? (long long)(0ull - (unsigned long long)a) : a; }
static __device__ __forceinline__ int af_dsl_f2i32(float x) { return x != x ? 0 : x <= -2147483648.0f ? (-2147483647 - 1) : x >= 2147483648.0f ? 2147483647 : (int)x; }
static __device__ __forceinline__ unsigned af_dsl_f2u32(float x) { return !(x > -1.0f) ? 0u : x >= 4294967296.0f ? 4294967295u : (unsigned)x; }
static __device__ __forceinline__ long long af_dsl_f2i64(float x) { return x != x ? 0ll : x <= -9223372036854775808.0f ? (-9223372036854775807ll - 1) : x >= 9223372036854775808.0f ? 9223372036854775807ll : (long long)x; }
static __device__ __forceinline__ unsigned long long af_dsl_f2u64(float x) { return !(x > -1.0f) ? 0ull : x >= 18446744073709551616.0f ? 18446744073709551615ull : (unsigned long long)x; }
#endif // AF_DSL_HELPERS
"#;

const RESERVED: &[&str] = &[
    "alignas",
    "alignof",
    "and",
    "asm",
    "auto",
    "bool",
    "break",
    "case",
    "catch",
    "char",
    "class",
    "const",
    "constexpr",
    "continue",
    "default",
    "delete",
    "do",
    "double",
    "else",
    "enum",
    "explicit",
    "export",
    "extern",
    "false",
    "float",
    "for",
    "friend",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "mutable",
    "namespace",
    "new",
    "noexcept",
    "not",
    "nullptr",
    "operator",
    "or",
    "private",
    "protected",
    "public",
    "register",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "template",
    "this",
    "throw",
    "true",
    "try",
    "typedef",
    "typeid",
    "typename",
    "union",
    "unsigned",
    "using",
    "virtual",
    "void",
    "volatile",
    "while",
    "xor",
    "threadIdx",
    "blockIdx",
    "blockDim",
    "gridDim",
    "warpSize",
    "min",
    "max",
    "abs",
    "expf",
    "exp2f",
    "logf",
    "log2f",
    "log10f",
    "sqrtf",
    "tanhf",
    "sinf",
    "cosf",
    "floorf",
    "ceilf",
    "powf",
    "fminf",
    "fmaxf",
    "fabsf",
    "fmodf",
    "INFINITY",
    "NAN",
    "main",
];

/// Whether `name` cannot be used as a C identifier in the emitted text.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
        || name.starts_with("af_")
        || name.starts_with("AF_")
        || name.starts_with("__")
}

pub(crate) fn emit(f: &CFn) -> String {
    let mut s = String::from(HELPERS);
    let ret = f.ret;
    let fixed = match f.kind {
        FnKind::Mask => "int b, int h, long long q_pos, long long kv_pos",
        FnKind::Score => "float score, int b, int h, long long q_pos, long long kv_pos",
    };
    let _ = writeln!(
        s,
        "// attnforge {} translated from Rust: {}",
        f.kind.as_str(),
        f.rust_sig
    );
    let mut sig = fixed.to_string();
    for (n, t) in &f.params {
        let _ = write!(sig, ", {t} {n}");
    }
    let _ = writeln!(s, "__device__ __forceinline__ {ret} {}({sig}) {{", f.name);
    for st in &f.body {
        stmt(&mut s, st, 1);
    }
    s.push_str("}\n");
    s
}

fn stmt(s: &mut String, st: &CStmt, depth: usize) {
    let ind = "    ".repeat(depth);
    match st {
        CStmt::Decl {
            ty,
            name,
            init,
            mutable,
        } => match init {
            Some(e) => {
                let c = if *mutable { "" } else { "const " };
                let _ = writeln!(s, "{ind}{c}{ty} {name} = {};", expr(e));
            }
            None => {
                let _ = writeln!(s, "{ind}{ty} {name};");
            }
        },
        CStmt::Assign(n, e) => {
            let _ = writeln!(s, "{ind}{n} = {};", expr(e));
        }
        CStmt::Void(n) => {
            let _ = writeln!(s, "{ind}(void){n};");
        }
        CStmt::Return(e) => {
            let _ = writeln!(s, "{ind}return {};", expr(e));
        }
        CStmt::If(c, t, f) => {
            let _ = writeln!(s, "{ind}if ({}) {{", expr(c));
            for x in t {
                stmt(s, x, depth + 1);
            }
            if f.is_empty() {
                let _ = writeln!(s, "{ind}}}");
            } else {
                let _ = writeln!(s, "{ind}}} else {{");
                for x in f {
                    stmt(s, x, depth + 1);
                }
                let _ = writeln!(s, "{ind}}}");
            }
        }
    }
}

/// Prints an expression; every compound node is parenthesised, so C precedence never matters.
pub(crate) fn expr(e: &CExpr) -> String {
    match e {
        CExpr::Raw(r) => r.clone(),
        CExpr::Bin(op, a, b) => format!("({} {op} {})", expr(a), expr(b)),
        CExpr::Un(op, a) => format!("({op}{})", expr(a)),
        CExpr::Cast(t, a) => format!("(({t}){})", expr(a)),
        CExpr::Call(n, args) => {
            let a: Vec<String> = args.iter().map(expr).collect();
            format!("{n}({})", a.join(", "))
        }
        CExpr::Ternary(c, a, b) => format!("({} ? {} : {})", expr(c), expr(a), expr(b)),
        CExpr::Index(n, i) => format!("{n}[{}]", expr(i)),
    }
}
