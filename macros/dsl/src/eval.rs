//! Host evaluation of a mask or score function given as source text.
//!
//! A spec file (TOML) carries its user functions as Rust text, which cannot be compiled into
//! the host program. [`compile_eval`] checks the text exactly as [`crate::parse_mask_fn`] /
//! [`crate::parse_score_fn`] do and turns the typed AST into a small tree that is evaluated
//! with Rust's release-mode semantics (wrapping integer arithmetic, truncating division,
//! masked shift amounts, saturating float-to-integer casts, `f32` math). The f64 reference
//! then calls the *same* function the kernel was generated from.
//!
//! ```
//! use attnforge_dsl::eval::{compile_eval, Value};
//! use attnforge_dsl::FnKind;
//! let f = compile_eval("fn band(q: i64, kv: i64, w: i64) -> bool { (q - kv).abs() <= w }", FnKind::Mask).unwrap();
//! assert!(f.mask(0, 0, 5, 3, &[Value::Int(2)]).unwrap());
//! assert!(!f.mask(0, 0, 5, 2, &[Value::Int(2)]).unwrap());
//! ```

use crate::check::{Binding, Typed};
use crate::parse::{BinOp, Block, Const, Expr, ExprKind, Func, Lit, Role, Stmt, Ty, UnOp};
use crate::{FnKind, ParamKind, SourceError, UserFnDef};

/// A runtime value of a user parameter (scalars of every integer kind travel as `i64`).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any integer or bool scalar (`bool`: 0 or 1).
    Int(i64),
    /// `f32` scalar.
    Float(f32),
    /// `&[u32]` / `&[i32]` array (u32 elements reinterpreted from `i32` bits).
    Ints(Vec<i32>),
    /// `&[f32]` array.
    Floats(Vec<f32>),
}

/// An evaluation error (a Rust panic of the same function: out-of-bounds index, division
/// by zero, a missing or mistyped parameter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// A scalar during evaluation: integers are kept as the bit pattern of their type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    I(i128),
    F(f32),
    B(bool),
}

#[derive(Clone, Debug)]
enum N {
    Lit(V),
    Index(usize),
    Param(usize, ParamKind),
    Local(usize),
    Un(UnOp, Ty, Box<N>),
    /// Operator, operand type, operands and the operator's source position (for errors).
    Bin(BinOp, Ty, Box<N>, Box<N>, Pos),
    Cast(Ty, Ty, Box<N>),
    If(Box<N>, Box<Blk>, Option<Box<N>>),
    Block(Box<Blk>),
    /// Array parameter, element type, index, and the array's name and position (for errors).
    Elem(usize, Ty, Box<N>, Box<(String, Pos)>),
    Call(Func, Ty, Vec<N>),
    Return(Box<N>),
}

/// A 1-based source line and column.
#[derive(Clone, Copy, Debug)]
struct Pos(usize, usize);

impl Pos {
    fn of(r: crate::Rng) -> Pos {
        let start = r.0.start();
        Pos(start.line, start.column + 1)
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.0, self.1)
    }
}

#[derive(Clone, Debug)]
struct Blk {
    lets: Vec<(Option<usize>, N)>,
    tail: Option<N>,
}

/// A checked user function ready to be evaluated on the host (`Send + Sync`, cheap to clone).
#[derive(Clone, Debug)]
pub struct EvalFn {
    kind: FnKind,
    /// Role and declared type of every index parameter, in order.
    index: Vec<(Role, Ty)>,
    params: Vec<ParamKind>,
    n_locals: usize,
    body: Blk,
}

/// Parse, check and prepare `src` for host evaluation. Errors are the translator's own
/// (the same list [`crate::parse_mask_fn`] would give).
pub fn compile_eval(src: &str, kind: FnKind) -> Result<EvalFn, Vec<SourceError>> {
    let item = crate::parse_item(src)?;
    let mut errors = crate::Errors::default();
    let ast = crate::parse::parse_fn(&item, kind, &mut errors);
    if !ast.sig_complete {
        return Err(conv(errors));
    }
    let typed = crate::check::check(&ast, &mut errors);
    if !errors.is_empty() {
        return Err(conv(errors));
    }
    Ok(from_ast(&ast, &typed, kind))
}

fn from_ast(ast: &crate::parse::FnAst, typed: &Typed, kind: FnKind) -> EvalFn {
    let mut b = Builder {
        typed,
        params: ast.params.iter().map(|p| p.kind).collect(),
        locals: Vec::new(),
    };
    let body = b.block(&ast.body);
    EvalFn {
        kind,
        index: ast.index.iter().map(|p| (p.role, p.ty)).collect(),
        params: ast.params.iter().map(|p| p.kind).collect(),
        n_locals: b.locals.len(),
        body,
    }
}

/// The derivatives of a score function, evaluated on the host (the functions
/// [`crate::translate_score_grad`] emits, on the same typed ASTs).
#[derive(Clone, Debug)]
pub struct EvalGrad {
    d_score: EvalFn,
    /// Parameter index, `d s'/d param[..]`, and for a table the index function.
    params: Vec<(usize, EvalFn, Option<EvalFn>)>,
}

/// One parameter derivative at an entry: `d s' / d params[param][element]` (`element` 0 for
/// an `f32` scalar). A table read twice gives two entries (their sum is the derivative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamPartial {
    /// Index of the parameter in the function's user parameters.
    pub param: usize,
    /// The element of an `&[f32]` parameter (0 for a scalar).
    pub element: usize,
    /// The partial derivative.
    pub value: f32,
}

/// Parse, check and derive a score function given as text: the forward evaluator and the
/// derivatives' (errors as [`crate::parse_score_grad`]).
pub fn compile_score_grad(src: &str) -> Result<(EvalFn, EvalGrad), Vec<SourceError>> {
    let item = crate::parse_item(src)?;
    let mut errors = crate::Errors::default();
    let ast = crate::parse::parse_fn(&item, FnKind::Score, &mut errors);
    if !ast.sig_complete {
        return Err(conv(errors));
    }
    let typed = crate::check::check(&ast, &mut errors);
    if !errors.is_empty() {
        return Err(conv(errors));
    }
    let grads = crate::checked_grads(&ast, &typed).map_err(|e| {
        let mut errors = crate::Errors::default();
        for (span, msg) in e {
            errors.push(span, msg);
        }
        conv(errors)
    })?;
    let mut d_score = None;
    let mut params = Vec::new();
    for g in grads {
        let partial = from_ast(&g.partial.0, &g.partial.1, FnKind::Score);
        let index = g.index.map(|(a, t)| from_ast(&a, &t, FnKind::Score));
        match g.target {
            crate::grad::Target::Score => d_score = Some(partial),
            crate::grad::Target::Scalar(p) | crate::grad::Target::Elem(p, _) => {
                params.push((p, partial, index));
            }
        }
    }
    let forward = from_ast(&ast, &typed, FnKind::Score);
    let d_score = d_score.unwrap_or_else(|| forward.clone());
    Ok((forward, EvalGrad { d_score, params }))
}

impl EvalGrad {
    /// `d s' / d score` at one entry (arguments as [`EvalFn::score`]).
    pub fn d_score(
        &self,
        s: f64,
        b: usize,
        h: usize,
        q: i64,
        kv: i64,
        params: &[Value],
    ) -> Result<f32, EvalError> {
        self.d_score.score(s, b, h, q, kv, params)
    }

    /// Appends the parameter derivatives at one entry to `out`. A table element is reported
    /// only where its derivative is non-zero (an indexing on a branch the forward did not take
    /// has derivative 0 and its index is not evaluated).
    #[allow(clippy::too_many_arguments)]
    pub fn d_params(
        &self,
        s: f64,
        b: usize,
        h: usize,
        q: i64,
        kv: i64,
        params: &[Value],
        out: &mut Vec<ParamPartial>,
    ) -> Result<(), EvalError> {
        for (param, partial, index) in &self.params {
            let value = partial.score(s, b, h, q, kv, params)?;
            let element = match index {
                None => 0,
                Some(_) if value == 0.0 => continue,
                Some(f) => match f.run(s as f32, b, h, q, kv, params)? {
                    V::I(i) => usize::try_from(i).map_err(|_| {
                        EvalError(format!("negative index {i} of parameter {param}"))
                    })?,
                    other => return Err(EvalError(format!("index function returned {other:?}"))),
                },
            };
            out.push(ParamPartial {
                param: *param,
                element,
                value,
            });
        }
        Ok(())
    }
}

/// Both halves at once: the CUDA translation and the host evaluator of the same text.
pub fn translate_and_compile(
    src: &str,
    kind: FnKind,
) -> Result<(UserFnDef, EvalFn), Vec<SourceError>> {
    let def = crate::parse_src(src, kind)?;
    Ok((def, compile_eval(src, kind)?))
}

fn conv(e: crate::Errors) -> Vec<SourceError> {
    e.into_vec()
        .iter()
        .flat_map(crate::to_source_errors)
        .collect()
}

struct Builder<'a> {
    typed: &'a Typed,
    params: Vec<ParamKind>,
    locals: Vec<usize>,
}

impl Builder<'_> {
    fn block(&mut self, b: &Block) -> Blk {
        let mut lets = Vec::new();
        for s in &b.stmts {
            match s {
                Stmt::Let { id, init, .. } => {
                    let e = self.expr(init);
                    self.locals.push(*id);
                    lets.push((Some(self.locals.len() - 1), e));
                }
                Stmt::Expr(e) => lets.push((None, self.expr(e))),
            }
        }
        let tail = b.tail.as_ref().map(|e| self.expr(e));
        Blk { lets, tail }
    }

    fn ty(&self, e: &Expr) -> Ty {
        self.typed.ty(e.id)
    }

    fn expr(&mut self, e: &Expr) -> N {
        let t = self.ty(e);
        match &e.kind {
            ExprKind::Lit(Lit::Bool(b)) => N::Lit(V::B(*b)),
            ExprKind::Lit(Lit::Float(f)) => N::Lit(V::F(*f)),
            ExprKind::Lit(Lit::Int(v, _)) => {
                if t == Ty::F32 {
                    N::Lit(V::F(*v as f32))
                } else {
                    N::Lit(V::I(wrap(t, *v as i128)))
                }
            }
            ExprKind::Var(_) => match self.typed.vars.get(&e.id) {
                Some(Binding::Index(i)) => N::Index(*i),
                Some(Binding::Param(i)) => N::Param(*i, self.params[*i]),
                Some(Binding::Let(id)) => {
                    let slot = self
                        .locals
                        .iter()
                        .rposition(|l| l == id)
                        .expect("checked binding");
                    N::Local(slot)
                }
                _ => N::Lit(V::I(0)),
            },
            ExprKind::Const(c) => N::Lit(match c {
                // The CUDA side prints these as float literals too (lower.rs).
                Const::Max(Ty::F32) => V::F(f32::MAX),
                Const::Min(Ty::F32) => V::F(f32::MIN),
                Const::Max(ty) => int_bound(*ty, true),
                Const::Min(ty) => int_bound(*ty, false),
                Const::Infinity => V::F(f32::INFINITY),
                Const::NegInfinity => V::F(f32::NEG_INFINITY),
                Const::Epsilon => V::F(f32::EPSILON),
            }),
            ExprKind::Unary(op, a) => N::Un(*op, t, Box::new(self.expr(a))),
            ExprKind::Binary(op, a, b) => {
                let ot = self.ty(a);
                N::Bin(
                    *op,
                    ot,
                    Box::new(self.expr(a)),
                    Box::new(self.expr(b)),
                    Pos::of(e.span),
                )
            }
            ExprKind::Cast(a, to) => N::Cast(self.ty(a), *to, Box::new(self.expr(a))),
            ExprKind::If(c, then, els) => N::If(
                Box::new(self.expr(c)),
                Box::new(self.block(then)),
                els.as_ref().map(|e| Box::new(self.expr(e))),
            ),
            ExprKind::Block(b) => N::Block(Box::new(self.block(b))),
            ExprKind::Index(name, _, idx) => {
                let p = match self.typed.vars.get(&e.id) {
                    Some(Binding::Param(i)) => *i,
                    _ => usize::MAX,
                };
                N::Elem(
                    p,
                    t,
                    Box::new(self.expr(idx)),
                    Box::new((name.clone(), Pos::of(e.span))),
                )
            }
            ExprKind::Call(f, args, _) => {
                let at = args.first().map(|a| self.ty(a)).unwrap_or(t);
                N::Call(*f, at, args.iter().map(|a| self.expr(a)).collect())
            }
            ExprKind::Return(a) => N::Return(Box::new(self.expr(a))),
            ExprKind::Error => N::Lit(V::I(0)),
        }
    }
}

fn int_bound(t: Ty, max: bool) -> V {
    let bits = t.bits();
    V::I(match (t.is_signed_int(), max) {
        (true, true) => (1i128 << (bits - 1)) - 1,
        (true, false) => -(1i128 << (bits - 1)),
        (false, true) => (1i128 << bits) - 1,
        (false, false) => 0,
    })
}

/// Reduce an integer to the value range of `t` (two's-complement wrap).
fn wrap(t: Ty, v: i128) -> i128 {
    let bits = t.bits();
    let m = v & ((1i128 << bits) - 1);
    if t.is_signed_int() && m >= (1i128 << (bits - 1)) {
        m - (1i128 << bits)
    } else {
        m
    }
}

enum Flow {
    Val(V),
    Ret(V),
}

struct Frame<'a> {
    index: Vec<V>,
    params: &'a [Value],
    locals: Vec<V>,
}

macro_rules! val {
    ($e:expr) => {
        match $e? {
            Flow::Val(v) => v,
            r @ Flow::Ret(_) => return Ok(r),
        }
    };
}

impl EvalFn {
    /// Mask or score.
    pub fn kind(&self) -> FnKind {
        self.kind
    }

    /// Kinds of the user parameters, in declaration order.
    pub fn param_kinds(&self) -> &[ParamKind] {
        &self.params
    }

    /// Evaluate a mask function at `(b, h, q_pos, kv_pos)` with user parameter values.
    pub fn mask(
        &self,
        b: usize,
        h: usize,
        q: i64,
        kv: i64,
        params: &[Value],
    ) -> Result<bool, EvalError> {
        match self.run(0.0, b, h, q, kv, params)? {
            V::B(x) => Ok(x),
            other => Err(EvalError(format!("mask returned {other:?}"))),
        }
    }

    /// Evaluate a score function (the score is rounded to `f32` first, as the Rust function
    /// takes an `f32`; the result is the function's `f32` result).
    pub fn score(
        &self,
        s: f64,
        b: usize,
        h: usize,
        q: i64,
        kv: i64,
        params: &[Value],
    ) -> Result<f32, EvalError> {
        match self.run(s as f32, b, h, q, kv, params)? {
            V::F(x) => Ok(x),
            other => Err(EvalError(format!("score returned {other:?}"))),
        }
    }

    fn run(
        &self,
        s: f32,
        b: usize,
        h: usize,
        q: i64,
        kv: i64,
        params: &[Value],
    ) -> Result<V, EvalError> {
        if params.len() != self.params.len() {
            return Err(EvalError(format!(
                "expected {} parameter values, got {}",
                self.params.len(),
                params.len()
            )));
        }
        let index = self
            .index
            .iter()
            .map(|(role, ty)| match role {
                Role::Score => V::F(s),
                Role::Batch => V::I(wrap(*ty, b as i128)),
                Role::Head => V::I(wrap(*ty, h as i128)),
                Role::Query => V::I(wrap(*ty, q as i128)),
                Role::Key => V::I(wrap(*ty, kv as i128)),
            })
            .collect();
        let mut f = Frame {
            index,
            params,
            locals: vec![V::I(0); self.n_locals],
        };
        match eval_block(&self.body, &mut f)? {
            Flow::Val(v) | Flow::Ret(v) => Ok(v),
        }
    }
}

fn eval_block(b: &Blk, f: &mut Frame<'_>) -> Result<Flow, EvalError> {
    for (slot, e) in &b.lets {
        let v = val!(eval(e, f));
        if let Some(s) = slot {
            f.locals[*s] = v;
        }
    }
    match &b.tail {
        Some(t) => eval(t, f),
        None => Ok(Flow::Val(V::I(0))),
    }
}

fn param_scalar(p: &[Value], i: usize, kind: ParamKind) -> Result<V, EvalError> {
    let bad = || EvalError(format!("parameter {i} is not a {}", kind.rust_type()));
    let t = match kind {
        ParamKind::U32 => Ty::U32,
        ParamKind::I32 => Ty::I32,
        ParamKind::I64 => Ty::I64,
        ParamKind::U64 => Ty::U64,
        ParamKind::Bool => Ty::Bool,
        ParamKind::F32 => Ty::F32,
        _ => return Err(bad()),
    };
    match (p.get(i), t) {
        (Some(Value::Float(x)), Ty::F32) => Ok(V::F(*x)),
        (Some(Value::Int(x)), Ty::Bool) => Ok(V::B(*x != 0)),
        (Some(Value::Int(x)), t) if t != Ty::F32 => Ok(V::I(wrap(t, i128::from(*x)))),
        _ => Err(bad()),
    }
}

fn int(v: V) -> i128 {
    match v {
        V::I(x) => x,
        V::B(b) => i128::from(b),
        V::F(x) => x as i128,
    }
}

fn flt(v: V) -> f32 {
    match v {
        V::F(x) => x,
        V::I(x) => x as f32,
        V::B(b) => f32::from(u8::from(b)),
    }
}

fn boolean(v: V) -> bool {
    match v {
        V::B(b) => b,
        V::I(x) => x != 0,
        V::F(x) => x != 0.0,
    }
}

fn cast(from: Ty, to: Ty, v: V) -> V {
    match to {
        Ty::F32 => V::F(match v {
            V::F(x) => x,
            V::I(x) => {
                if from.is_signed_int() {
                    x as i64 as f32
                } else {
                    x as u64 as f32
                }
            }
            V::B(b) => f32::from(u8::from(b)),
        }),
        Ty::Bool => V::B(boolean(v)),
        t => V::I(match v {
            // Rust: saturating, NaN -> 0.
            V::F(x) => {
                let (lo, hi) = match (int_bound(t, false), int_bound(t, true)) {
                    (V::I(a), V::I(b)) => (a, b),
                    _ => (0, 0),
                };
                if x.is_nan() {
                    0
                } else {
                    (x.trunc() as f64).clamp(lo as f64, hi as f64) as i128
                }
            }
            other => wrap(t, int(other)),
        }),
    }
}

fn eval(n: &N, f: &mut Frame<'_>) -> Result<Flow, EvalError> {
    Ok(Flow::Val(match n {
        N::Lit(v) => *v,
        N::Index(i) => f.index[*i],
        N::Param(i, k) => param_scalar(f.params, *i, *k)?,
        N::Local(s) => f.locals[*s],
        N::Un(op, t, a) => {
            let x = val!(eval(a, f));
            match (op, x) {
                (UnOp::Not, V::B(b)) => V::B(!b),
                (UnOp::Not, V::I(i)) => V::I(wrap(*t, !i)),
                (UnOp::Neg, V::F(x)) => V::F(-x),
                (UnOp::Neg, V::I(i)) => V::I(wrap(*t, i.wrapping_neg())),
                (_, v) => v,
            }
        }
        N::Bin(op, t, a, b, pos) => {
            let x = val!(eval(a, f));
            match op {
                BinOp::And if !boolean(x) => return Ok(Flow::Val(V::B(false))),
                BinOp::Or if boolean(x) => return Ok(Flow::Val(V::B(true))),
                _ => {}
            }
            let y = val!(eval(b, f));
            binary(*op, *t, x, y).map_err(|e| EvalError(format!("{pos}: {}", e.0)))?
        }
        N::Cast(from, to, a) => cast(*from, *to, val!(eval(a, f))),
        N::If(c, then, els) => {
            if boolean(val!(eval(c, f))) {
                return eval_block(then, f);
            }
            match els {
                Some(e) => return eval(e, f),
                None => V::I(0),
            }
        }
        N::Block(b) => return eval_block(b, f),
        N::Elem(p, t, idx, site) => {
            let i = int(val!(eval(idx, f)));
            let (name, pos) = &**site;
            let oob = |len: usize| {
                EvalError(format!(
                    "{pos}: index out of bounds: `{name}[{i}]` but `{name}` has length {len}"
                ))
            };
            match f.params.get(*p) {
                Some(Value::Ints(a)) => {
                    let x = *usize::try_from(i)
                        .ok()
                        .and_then(|u| a.get(u))
                        .ok_or_else(|| oob(a.len()))?;
                    V::I(wrap(*t, i128::from(x)))
                }
                Some(Value::Floats(a)) => V::F(
                    *usize::try_from(i)
                        .ok()
                        .and_then(|u| a.get(u))
                        .ok_or_else(|| oob(a.len()))?,
                ),
                _ => return Err(EvalError(format!("parameter {p} is not an array"))),
            }
        }
        N::Call(func, t, args) => {
            let mut v = Vec::with_capacity(args.len());
            for a in args {
                v.push(val!(eval(a, f)));
            }
            call(*func, *t, &v)
        }
        N::Return(a) => return Ok(Flow::Ret(val!(eval(a, f)))),
    }))
}

fn call(func: Func, t: Ty, a: &[V]) -> V {
    match func {
        Func::Min | Func::Max if t == Ty::F32 => {
            let (x, y) = (flt(a[0]), flt(a[1]));
            V::F(if func == Func::Min {
                x.min(y)
            } else {
                x.max(y)
            })
        }
        Func::Min => V::I(int(a[0]).min(int(a[1]))),
        Func::Max => V::I(int(a[0]).max(int(a[1]))),
        Func::Abs if t == Ty::F32 => V::F(flt(a[0]).abs()),
        Func::Abs => V::I(wrap(t, int(a[0]).wrapping_abs())),
        Func::Powf => V::F(flt(a[0]).powf(flt(a[1]))),
        Func::Math(name) => {
            let x = flt(a[0]);
            V::F(match name {
                "expf" => x.exp(),
                "exp2f" => x.exp2(),
                "logf" => x.ln(),
                "log2f" => x.log2(),
                "log10f" => x.log10(),
                "sqrtf" => x.sqrt(),
                "tanhf" => x.tanh(),
                "sinf" => x.sin(),
                "cosf" => x.cos(),
                "floorf" => x.floor(),
                "ceilf" => x.ceil(),
                _ => f32::NAN,
            })
        }
    }
}

fn binary(op: BinOp, t: Ty, x: V, y: V) -> Result<V, EvalError> {
    use BinOp::*;
    if let (V::F(a), V::F(b)) = (x, y) {
        return Ok(match op {
            Add => V::F(a + b),
            Sub => V::F(a - b),
            Mul => V::F(a * b),
            Div => V::F(a / b),
            Rem => V::F(a % b),
            Eq => V::B(a == b),
            Ne => V::B(a != b),
            Lt => V::B(a < b),
            Le => V::B(a <= b),
            Gt => V::B(a > b),
            Ge => V::B(a >= b),
            _ => return Err(EvalError(format!("{op:?} on f32"))),
        });
    }
    if let (V::B(a), V::B(b)) = (x, y) {
        return Ok(V::B(match op {
            And | BitAnd => a & b,
            Or | BitOr => a | b,
            BitXor | Ne => a ^ b,
            Eq => a == b,
            Lt => !a & b,
            Le => a <= b,
            Gt => a & !b,
            Ge => a >= b,
            _ => return Err(EvalError(format!("{op:?} on bool"))),
        }));
    }
    let (a, b) = (int(x), int(y));
    let bits = t.bits();
    Ok(match op {
        // Operands are values of a 64-bit type at most; wrapping i128 arithmetic keeps an
        // unexpected operand (a bug elsewhere) from panicking.
        Add => V::I(wrap(t, a.wrapping_add(b))),
        Sub => V::I(wrap(t, a.wrapping_sub(b))),
        Mul => V::I(wrap(t, a.wrapping_mul(b))),
        Div | Rem => {
            let what = if op == Div {
                "divide"
            } else {
                "calculate the remainder"
            };
            let sym = if op == Div { "/" } else { "%" };
            if b == 0 {
                return Err(EvalError(format!(
                    "attempt to {what} by zero (`{a} {sym} 0` in {})",
                    t.name()
                )));
            }
            if t.is_signed_int() && V::I(a) == int_bound(t, false) && b == -1 {
                return Err(EvalError(format!(
                    "attempt to {what} with overflow (`{a} {sym} -1` in {})",
                    t.name()
                )));
            }
            V::I(wrap(t, if op == Div { a / b } else { a % b }))
        }
        BitAnd => V::I(wrap(t, a & b)),
        BitOr => V::I(wrap(t, a | b)),
        BitXor => V::I(wrap(t, a ^ b)),
        Shl => V::I(wrap(t, a << (b & i128::from(bits - 1)))),
        Shr => {
            let s = b & i128::from(bits - 1);
            // `a` holds the value of its type: arithmetic shift for signed, logical for
            // unsigned (non-negative) values.
            V::I(wrap(t, a >> s))
        }
        Eq => V::B(a == b),
        Ne => V::B(a != b),
        Lt => V::B(a < b),
        Le => V::B(a <= b),
        Gt => V::B(a > b),
        Ge => V::B(a >= b),
        And | Or => V::B(match op {
            And => a != 0 && b != 0,
            _ => a != 0 || b != 0,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(src: &str) -> EvalFn {
        compile_eval(src, FnKind::Mask).expect("valid mask")
    }

    #[test]
    fn matches_native_rust_on_a_grid() {
        let f = mask(
            "fn m(q: u32, kv: u32, w: u32, doc: &[i32]) -> bool {
                 let same = doc[q as usize] == doc[kv as usize];
                 if kv > q { return false; }
                 same && (q - kv) % 3 != 1 && (kv < w || (q >> 1) <= kv + 2)
             }",
        );
        let _ = &f;
        let native = |q: u32, kv: u32, w: u32, doc: &[i32]| -> bool {
            let same = doc[q as usize] == doc[kv as usize];
            if kv > q {
                return false;
            }
            same && (q - kv) % 3 != 1 && (kv < w || (q >> 1) <= kv + 2)
        };
        let doc: Vec<i32> = (0..20).map(|i| i / 7).collect();
        for q in 0..20i64 {
            for kv in 0..20i64 {
                let got = f
                    .mask(0, 0, q, kv, &[Value::Int(4), Value::Ints(doc.clone())])
                    .unwrap();
                assert_eq!(got, native(q as u32, kv as u32, 4, &doc), "q={q} kv={kv}");
            }
        }
    }

    #[test]
    fn score_wrapping_and_casts() {
        let f = compile_eval(
            "fn s(score: f32, h: u32, q: i32, kv: i32, c: f32) -> f32 {
                 let d = (q - kv) as f32;
                 let big = (h as i32).wrapping_mul(1) * 2147483647;
                 c * (score / c).tanh() - 0.5 * d.abs() + (big as f32) * 0.0 + (-1.5f32 as u32) as f32
             }",
            FnKind::Score,
        );
        // `wrapping_mul` is outside the subset: the evaluator reports the same error.
        assert!(f.is_err());
        let f = compile_eval(
            "fn s(score: f32, h: u32, q: i32, kv: i32, c: f32) -> f32 {
                 let d = (q - kv) as f32;
                 let big = (h as i32) * 2147483647;
                 c * (score / c).tanh() - 0.5 * d.abs() + (big as f32) * 0.0 + (-1.5f32 as u32) as f32 + (3.7f32 as i32) as f32
             }",
            FnKind::Score,
        )
        .unwrap();
        let native = |score: f32, h: u32, q: i32, kv: i32, c: f32| -> f32 {
            let d = (q - kv) as f32;
            let big = (h as i32).wrapping_mul(2147483647);
            c * (score / c).tanh() - 0.5 * d.abs()
                + (big as f32) * 0.0
                + (-1.5f32 as u32) as f32
                + (3.7f32 as i32) as f32
        };
        for (s, h, q, kv) in [
            (1.5f64, 3usize, 7i64, 2i64),
            (-20.0, 0, 0, 9),
            (0.25, 5, 100, 100),
        ] {
            let got = f.score(s, 0, h, q, kv, &[Value::Float(30.0)]).unwrap();
            use std::hint::black_box as bb;
            let want = native(
                bb(s as f32),
                bb(h as u32),
                bb(q as i32),
                bb(kv as i32),
                bb(30.0f32),
            );
            assert_eq!(got.to_bits(), want.to_bits());
        }
    }

    #[test]
    fn out_of_bounds_is_an_error_not_a_panic() {
        let f = mask(
            "fn m(q: u32, kv: u32, doc: &[u32]) -> bool { doc[q as usize] == doc[kv as usize] }",
        );
        let e = f.mask(0, 0, 5, 0, &[Value::Ints(vec![1, 2])]).unwrap_err();
        assert!(e.0.contains("out of bounds"), "{e}");
        let e = f.mask(0, 0, 0, 0, &[Value::Float(1.0)]).unwrap_err();
        assert!(e.0.contains("not an array"), "{e}");
    }

    #[test]
    fn integer_division_faults_are_errors_with_the_position() {
        let f = mask(
            "fn m(q: i32, kv: i32, d: i32) -> bool {
                 let x = q / d;
                 kv % d <= x
             }",
        );
        let e = f.mask(0, 0, 5, 3, &[Value::Int(0)]).unwrap_err();
        assert_eq!(
            e.0,
            "line 2, column 26: attempt to divide by zero (`5 / 0` in i32)"
        );
        let f = mask("fn m(q: u32, kv: u32, d: u32) -> bool {\n kv % d <= q }");
        let e = f.mask(0, 0, 5, 3, &[Value::Int(0)]).unwrap_err();
        assert_eq!(
            e.0,
            "line 2, column 2: attempt to calculate the remainder by zero (`3 % 0` in u32)"
        );
        // `i32::MIN / -1` overflows (Rust panics, x86 raises SIGFPE): an error as well.
        let f = mask("fn m(q: i32, kv: i32, d: i32) -> bool { i32::MIN / d <= q }");
        let e = f.mask(0, 0, 5, 3, &[Value::Int(-1)]).unwrap_err();
        assert!(
            e.0.contains("attempt to divide with overflow (`-2147483648 / -1` in i32)"),
            "{e}"
        );
        let f = mask("fn m(q: i64, kv: i64, d: i64) -> bool { i64::MIN % d <= q }");
        let e = f.mask(0, 0, 5, 3, &[Value::Int(-1)]).unwrap_err();
        assert!(e.0.contains("remainder with overflow"), "{e}");
        // The same operands in a wider type are fine.
        let f = mask("fn m(q: i64, kv: i64, d: i64) -> bool { (i32::MIN as i64) / d > q }");
        assert!(f.mask(0, 0, 5, 3, &[Value::Int(-1)]).unwrap());
    }

    #[test]
    fn index_errors_name_the_array_and_the_index() {
        let f = mask("fn m(q: i32, kv: i32, doc: &[i32]) -> bool { doc[(q - kv) as usize] == 0 }");
        let e = f
            .mask(0, 0, 1, 3, &[Value::Ints(vec![0, 0, 0])])
            .unwrap_err();
        assert_eq!(
            e.0,
            "line 1, column 46: index out of bounds: `doc[18446744073709551614]` but `doc` has length 3"
        );
    }

    #[test]
    fn f32_max_and_min_are_floats() {
        // Found by fuzzing: `f32::MAX` evaluated to the integer 2^64 - 1, and adding it to a
        // float overflowed i128 arithmetic (a panic in debug builds).
        let f = compile_eval(
            "fn s(score: f32, q: i32, kv: i32) -> f32 { f32::MAX + f32::INFINITY + f32::MIN * 0.0 + score }",
            FnKind::Score,
        )
        .unwrap();
        assert_eq!(f.score(1.0, 0, 0, 0, 0, &[]).unwrap(), f32::INFINITY);
        let f = compile_eval(
            "fn s(score: f32, q: i32, kv: i32) -> f32 { f32::MAX.min(score) + f32::MIN }",
            FnKind::Score,
        )
        .unwrap();
        assert_eq!(f.score(5e38, 0, 0, 0, 0, &[]).unwrap(), f32::MAX + f32::MIN);
        assert_eq!(f.score(0.0, 0, 0, 0, 0, &[]).unwrap(), f32::MIN);
    }
}
