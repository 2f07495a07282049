//! Lower: typed AST -> C statements and expressions with Rust's semantics made explicit
//! (wrapping signed arithmetic, saturating float-to-int casts, typed literals, short-circuit
//! evaluation kept when a right operand needs statements).

use crate::check::{Binding, Typed};
use crate::parse::{BinOp, Block, Const, Expr, ExprKind, FnAst, Func, Lit, Role, Stmt, Ty, UnOp};
use crate::FnKind;
use std::collections::{HashMap, HashSet};

/// A C expression; printing parenthesises every compound node.
#[derive(Debug, Clone)]
pub(crate) enum CExpr {
    Raw(String),
    Bin(&'static str, Box<CExpr>, Box<CExpr>),
    Un(&'static str, Box<CExpr>),
    Cast(&'static str, Box<CExpr>),
    Call(String, Vec<CExpr>),
    Ternary(Box<CExpr>, Box<CExpr>, Box<CExpr>),
    Index(String, Box<CExpr>),
}

#[derive(Debug)]
pub(crate) enum CStmt {
    /// A declaration; `const` when `mutable` is false.
    Decl {
        ty: &'static str,
        name: String,
        init: Option<CExpr>,
        mutable: bool,
    },
    Assign(String, CExpr),
    If(CExpr, Vec<CStmt>, Vec<CStmt>),
    Return(CExpr),
    /// `(void)name;`: marks a converted index parameter as possibly unused.
    Void(String),
}

/// A lowered function, ready to print.
#[derive(Debug)]
pub(crate) struct CFn {
    pub name: String,
    pub kind: FnKind,
    pub rust_sig: String,
    /// The C return type.
    pub ret: &'static str,
    pub params: Vec<(String, &'static str)>,
    pub body: Vec<CStmt>,
}

pub(crate) fn c_type(t: Ty) -> &'static str {
    match t {
        Ty::Bool => "bool",
        Ty::I32 => "int",
        Ty::U32 => "unsigned",
        Ty::I64 | Ty::Isize => "long long",
        Ty::U64 | Ty::Usize => "unsigned long long",
        Ty::F32 => "float",
        Ty::Unit | Ty::Never => "void",
    }
}

fn unsigned_of(t: Ty) -> &'static str {
    if t.bits() == 32 {
        "unsigned"
    } else {
        "unsigned long long"
    }
}

struct Lowerer<'a> {
    typed: &'a Typed,
    used: HashSet<String>,
    names: HashMap<Binding, String>,
}

pub(crate) fn lower(ast: &FnAst, typed: &Typed) -> CFn {
    let mut l = Lowerer {
        typed,
        used: HashSet::new(),
        names: HashMap::new(),
    };
    for fixed in ["b", "h", "q_pos", "kv_pos", "score"] {
        l.used.insert(fixed.to_string());
    }
    let mut params = Vec::new();
    for (i, p) in ast.params.iter().enumerate() {
        let n = l.fresh(&p.name);
        params.push((n.clone(), p.kind.c_type()));
        l.names.insert(Binding::Param(i), n);
    }
    let mut body = Vec::new();
    for (i, p) in ast.index.iter().enumerate() {
        let (c_param, c_ty) = match p.role {
            Role::Score => ("score", "float"),
            Role::Batch => ("b", "int"),
            Role::Head => ("h", "int"),
            Role::Query => ("q_pos", "long long"),
            Role::Key => ("kv_pos", "long long"),
        };
        let want = c_type(p.ty);
        if p.name == c_param && want == c_ty {
            l.names.insert(Binding::Index(i), p.name.clone());
            continue;
        }
        let n = l.fresh(&p.name);
        let init = if want == c_ty {
            CExpr::Raw(c_param.into())
        } else {
            CExpr::Cast(want, Box::new(CExpr::Raw(c_param.into())))
        };
        body.push(CStmt::Decl {
            ty: want,
            name: n.clone(),
            init: Some(init),
            mutable: false,
        });
        body.push(CStmt::Void(n.clone()));
        l.names.insert(Binding::Index(i), n);
    }
    if let Some(v) = l.block(&ast.body, &mut body) {
        body.push(CStmt::Return(v));
    }
    let rust_sig = {
        let idx: Vec<String> = ast
            .index
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty.name()))
            .chain(
                ast.params
                    .iter()
                    .map(|p| format!("{}: {}", p.name, p.kind.rust_type())),
            )
            .collect();
        format!("fn {}({}) -> {}", ast.name, idx.join(", "), ast.ret.name())
    };
    CFn {
        name: ast.name.clone(),
        kind: ast.kind,
        rust_sig,
        ret: c_type(ast.ret),
        params,
        body,
    }
}

fn raw(s: impl Into<String>) -> CExpr {
    CExpr::Raw(s.into())
}

fn bin(op: &'static str, a: CExpr, b: CExpr) -> CExpr {
    CExpr::Bin(op, Box::new(a), Box::new(b))
}

fn cast(t: &'static str, e: CExpr) -> CExpr {
    CExpr::Cast(t, Box::new(e))
}

/// An integer literal of type `t` (C type chosen so the value is exact).
fn int_lit(v: u128, t: Ty) -> CExpr {
    match t {
        Ty::F32 => raw(format!("{:?}f", v as f32)),
        Ty::I32 if v <= i32::MAX as u128 => raw(v.to_string()),
        Ty::U32 if v <= u32::MAX as u128 => raw(format!("{v}u")),
        Ty::I64 | Ty::Isize if v <= i64::MAX as u128 => raw(format!("{v}ll")),
        _ => cast(c_type(t), raw(format!("{}ull", v as u64))),
    }
}

fn float_lit(v: f32) -> CExpr {
    if v.is_infinite() {
        return raw(if v > 0.0 {
            "AF_DSL_INF_F"
        } else {
            "(-AF_DSL_INF_F)"
        });
    }
    let s = format!("{v:?}");
    // `{:?}` prints `1e20` and `1.5`; both are valid C once suffixed.
    raw(format!("{s}f"))
}

impl Lowerer<'_> {
    fn fresh(&mut self, base: &str) -> String {
        let base = if crate::emit::is_reserved(base) {
            format!("{base}_")
        } else {
            base.to_string()
        };
        let mut n = base.clone();
        let mut k = 1;
        while self.used.contains(&n) {
            n = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(n.clone());
        n
    }

    fn ty(&self, e: &Expr) -> Ty {
        self.typed.ty(e.id)
    }

    /// Lowers a block's statements into `out` and returns its value, if it has one.
    fn block(&mut self, b: &Block, out: &mut Vec<CStmt>) -> Option<CExpr> {
        for s in &b.stmts {
            match s {
                Stmt::Let { id, name, init, .. } => {
                    let v = self.value(init, out);
                    let n = self.fresh(name);
                    let t = self.typed.ty(*id);
                    if !matches!(t, Ty::Unit | Ty::Never) {
                        out.push(CStmt::Decl {
                            ty: c_type(t),
                            name: n.clone(),
                            init: Some(v),
                            mutable: false,
                        });
                    }
                    self.names.insert(Binding::Let(*id), n);
                }
                Stmt::Expr(e) => self.stmt(e, out),
            }
        }
        let t = b.tail.as_ref()?;
        if matches!(self.ty(t), Ty::Unit | Ty::Never) {
            self.stmt(t, out);
            return None;
        }
        Some(self.value(t, out))
    }

    fn stmt(&mut self, e: &Expr, out: &mut Vec<CStmt>) {
        match &e.kind {
            ExprKind::Return(v) => {
                let v = self.value(v, out);
                out.push(CStmt::Return(v));
            }
            ExprKind::If(c, then, els) => {
                let cv = self.value(c, out);
                let mut t = Vec::new();
                self.block(then, &mut t);
                let mut f = Vec::new();
                if let Some(e) = els {
                    self.stmt(e, &mut f);
                }
                out.push(CStmt::If(cv, t, f));
            }
            ExprKind::Block(b) => {
                self.block(b, out);
            }
            _ => {
                let _ = self.value(e, out);
            }
        }
    }

    /// Whether `e` can be printed as one C expression.
    fn pure(&self, e: &Expr) -> bool {
        match &e.kind {
            ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Const(_) | ExprKind::Error => true,
            ExprKind::Unary(_, a) | ExprKind::Cast(a, _) | ExprKind::Index(_, _, a) => self.pure(a),
            ExprKind::Binary(_, a, b) => self.pure(a) && self.pure(b),
            ExprKind::Call(_, args, _) => args.iter().all(|a| self.pure(a)),
            ExprKind::Block(b) => self.pure_block(b),
            ExprKind::If(c, t, Some(e)) => self.pure(c) && self.pure_block(t) && self.pure(e),
            ExprKind::If(_, _, None) | ExprKind::Return(_) => false,
        }
    }

    fn pure_block(&self, b: &Block) -> bool {
        b.stmts.is_empty() && b.tail.as_ref().is_some_and(|t| self.pure(t))
    }

    /// Lowers `e` to a C expression, pushing any statements it needs into `out` first.
    fn value(&mut self, e: &Expr, out: &mut Vec<CStmt>) -> CExpr {
        let t = self.ty(e);
        if self.pure(e) {
            return self.expr(e, out);
        }
        match &e.kind {
            ExprKind::Block(b) => self.block(b, out).unwrap_or_else(|| raw("0")),
            ExprKind::If(c, then, Some(els)) if !matches!(t, Ty::Unit | Ty::Never) => {
                let cv = self.value(c, out);
                let r = self.fresh("r");
                out.push(CStmt::Decl {
                    ty: c_type(t),
                    name: r.clone(),
                    init: None,
                    mutable: true,
                });
                let mut ts = Vec::new();
                if let Some(v) = self.block(then, &mut ts) {
                    ts.push(CStmt::Assign(r.clone(), v));
                }
                let mut fs = Vec::new();
                let ev = self.value(els, &mut fs);
                if !matches!(self.ty(els), Ty::Never) {
                    fs.push(CStmt::Assign(r.clone(), ev));
                }
                out.push(CStmt::If(cv, ts, fs));
                raw(r)
            }
            ExprKind::Binary(op @ (BinOp::And | BinOp::Or), a, b) if !self.pure(b) => {
                let av = self.value(a, out);
                let r = self.fresh("r");
                out.push(CStmt::Decl {
                    ty: "bool",
                    name: r.clone(),
                    init: Some(av),
                    mutable: true,
                });
                let mut rs = Vec::new();
                let bv = self.value(b, &mut rs);
                rs.push(CStmt::Assign(r.clone(), bv));
                let cond = if *op == BinOp::And {
                    raw(r.clone())
                } else {
                    CExpr::Un("!", Box::new(raw(r.clone())))
                };
                out.push(CStmt::If(cond, rs, Vec::new()));
                raw(r)
            }
            ExprKind::Return(_) | ExprKind::If(..) => {
                self.stmt(e, out);
                raw("0")
            }
            _ => self.expr(e, out),
        }
    }

    /// Lowers a node whose operands are lowered through `value` (pure nodes need no `out`).
    fn expr(&mut self, e: &Expr, out: &mut Vec<CStmt>) -> CExpr {
        let t = self.ty(e);
        match &e.kind {
            ExprKind::Error => unreachable!("lowering runs only without errors"),
            ExprKind::Lit(Lit::Bool(b)) => raw(if *b { "true" } else { "false" }),
            ExprKind::Lit(Lit::Int(v, _)) => int_lit(*v, t),
            ExprKind::Lit(Lit::Float(v)) => float_lit(*v),
            ExprKind::Const(c) => match c {
                Const::Max(Ty::F32) => float_lit(f32::MAX),
                Const::Min(Ty::F32) => float_lit(f32::MIN),
                Const::Max(t) => match t {
                    Ty::I32 => raw("2147483647"),
                    Ty::U32 => raw("4294967295u"),
                    Ty::I64 | Ty::Isize => raw("9223372036854775807ll"),
                    _ => raw("18446744073709551615ull"),
                },
                Const::Min(t) => match t {
                    Ty::I32 => raw("(-2147483647 - 1)"),
                    Ty::I64 | Ty::Isize => raw("(-9223372036854775807ll - 1)"),
                    Ty::U32 => raw("0u"),
                    _ => raw("0ull"),
                },
                Const::Infinity => float_lit(f32::INFINITY),
                Const::NegInfinity => float_lit(f32::NEG_INFINITY),
                Const::Epsilon => float_lit(f32::EPSILON),
            },
            ExprKind::Var(_) => {
                let b = self.typed.vars[&e.id];
                raw(self.names[&b].clone())
            }
            ExprKind::Unary(op, a) => {
                let av = self.value(a, out);
                match (op, t) {
                    (UnOp::Not, Ty::Bool) => CExpr::Un("!", Box::new(av)),
                    (UnOp::Not, _) => cast(c_type(t), CExpr::Un("~", Box::new(av))),
                    (UnOp::Neg, Ty::F32) => CExpr::Un("-", Box::new(av)),
                    // Wrapping negation, done in the unsigned type.
                    (UnOp::Neg, _) => {
                        let u = unsigned_of(t);
                        cast(c_type(t), CExpr::Un("-", Box::new(cast(u, av))))
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let lt = self.ty(a);
                let (av, bv) = (self.value(a, out), self.value(b, out));
                self.binary(*op, lt, av, bv)
            }
            ExprKind::Cast(a, to) => {
                let from = self.ty(a);
                let av = self.value(a, out);
                if from == *to || c_type(from) == c_type(*to) {
                    av
                } else if from == Ty::F32 && to.is_int() {
                    let h = match to {
                        Ty::I32 => "af_dsl_f2i32",
                        Ty::U32 => "af_dsl_f2u32",
                        Ty::I64 | Ty::Isize => "af_dsl_f2i64",
                        _ => "af_dsl_f2u64",
                    };
                    CExpr::Call(h.into(), vec![av])
                } else {
                    cast(c_type(*to), av)
                }
            }
            ExprKind::Index(_, _, idx) => {
                let iv = self.value(idx, out);
                let name = self.names[&self.typed.vars[&e.id]].clone();
                CExpr::Index(name, Box::new(cast("long long", iv)))
            }
            ExprKind::Call(f, args, _) => {
                let vs: Vec<CExpr> = args.iter().map(|a| self.value(a, out)).collect();
                let name = match (f, t) {
                    (Func::Min, Ty::F32) => "fminf",
                    (Func::Max, Ty::F32) => "fmaxf",
                    (Func::Abs, Ty::F32) => "fabsf",
                    (Func::Min, _) => "af_dsl_min",
                    (Func::Max, _) => "af_dsl_max",
                    (Func::Abs, _) => "af_dsl_abs",
                    (Func::Powf, _) => "powf",
                    (Func::Math(n), _) => n,
                };
                CExpr::Call(name.into(), vs)
            }
            ExprKind::Block(b) => self.block(b, out).unwrap_or_else(|| raw("0")),
            ExprKind::If(c, then, Some(els)) => {
                let cv = self.value(c, out);
                let tv = self.block(then, out).unwrap_or_else(|| raw("0"));
                let ev = self.value(els, out);
                CExpr::Ternary(Box::new(cv), Box::new(tv), Box::new(ev))
            }
            ExprKind::If(_, _, None) | ExprKind::Return(_) => {
                self.stmt(e, out);
                raw("0")
            }
        }
    }

    fn binary(&self, op: BinOp, t: Ty, a: CExpr, b: CExpr) -> CExpr {
        use BinOp::*;
        let sym = op.symbol();
        match op {
            Rem if t == Ty::F32 => CExpr::Call("fmodf".into(), vec![a, b]),
            Add | Sub | Mul if t.is_signed_int() => {
                let u = unsigned_of(t);
                cast(c_type(t), bin(sym, cast(u, a), cast(u, b)))
            }
            BitAnd | BitOr | BitXor if t == Ty::Bool => cast("bool", bin(sym, a, b)),
            Shl | Shr => {
                let mask = if t.bits() == 32 { "31u" } else { "63u" };
                let amount = bin("&", cast("unsigned", b), raw(mask));
                if op == Shl && t.is_signed_int() {
                    cast(c_type(t), bin("<<", cast(unsigned_of(t), a), amount))
                } else {
                    cast(c_type(t), bin(sym, a, amount))
                }
            }
            _ => bin(sym, a, b),
        }
    }
}
