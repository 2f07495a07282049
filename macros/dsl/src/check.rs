//! Check: name resolution and type inference for the subset, as rustc does it (unsuffixed
//! literals take their type from context, default `i32` / `f32`). Produces one resolved type per
//! expression and binding id, and the binding each variable refers to.

use crate::parse::{BinOp, Block, Const, Expr, ExprKind, FnAst, Func, Lit, Stmt, Ty, UnOp};
use crate::{Errors, ParamKind, Rng};
use std::collections::HashMap;

/// What a name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Binding {
    /// Index parameter number `i` of `FnAst::index`.
    Index(usize),
    /// User parameter number `i` of `FnAst::params`.
    Param(usize),
    /// The `let` with this id.
    Let(usize),
    /// A parameter whose type was rejected.
    Bad,
}

/// Result of checking: resolved types and name resolution.
#[derive(Debug)]
pub(crate) struct Typed {
    pub tys: Vec<Ty>,
    pub vars: HashMap<usize, Binding>,
}

impl Typed {
    pub(crate) fn ty(&self, id: usize) -> Ty {
        self.tys[id]
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Known(Ty),
    Int,
    Float,
    Any,
    Link(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Numeric,
    Integer,
    BoolOrInt,
    SignedOrFloat,
    Scalar,
    CastSource,
}

struct Checker<'a, 'e> {
    ast: &'a FnAst,
    errors: &'e mut Errors,
    slots: Vec<Slot>,
    scopes: Vec<Vec<(String, Binding, usize)>>,
    vars: HashMap<usize, Binding>,
    deferred: Vec<(usize, Class, Rng, String)>,
    casts: Vec<(usize, Ty, Rng)>,
}

pub(crate) fn check(ast: &FnAst, errors: &mut Errors) -> Typed {
    let mut c = Checker {
        ast,
        errors,
        slots: vec![Slot::Any; ast.n_ids],
        scopes: vec![Vec::new()],
        vars: HashMap::new(),
        deferred: Vec::new(),
        casts: Vec::new(),
    };
    for (i, p) in ast.index.iter().enumerate() {
        let s = c.fresh(if p.ok { Slot::Known(p.ty) } else { Slot::Any });
        c.scopes[0].push((p.name.clone(), Binding::Index(i), s));
    }
    for (i, p) in ast.params.iter().enumerate() {
        let t = match p.kind {
            ParamKind::U32 => Slot::Known(Ty::U32),
            ParamKind::I32 => Slot::Known(Ty::I32),
            ParamKind::I64 => Slot::Known(Ty::I64),
            ParamKind::U64 => Slot::Known(Ty::U64),
            ParamKind::F32 => Slot::Known(Ty::F32),
            ParamKind::Bool => Slot::Known(Ty::Bool),
            _ => Slot::Any,
        };
        let s = c.fresh(t);
        c.scopes[0].push((p.name.clone(), Binding::Param(i), s));
    }
    for n in &ast.bad_params {
        let s = c.fresh(Slot::Any);
        c.scopes[0].push((n.clone(), Binding::Bad, s));
    }
    let body = c.block(&ast.body);
    let ret = c.fresh(Slot::Known(ast.ret));
    let span = ast
        .body
        .tail
        .as_ref()
        .map(|t| t.span)
        .unwrap_or_else(|| Rng::from(proc_macro2::Span::call_site()));
    if ast.ret_ok {
        c.unify(body, ret, span);
    }
    c.finish()
}

impl Checker<'_, '_> {
    fn fresh(&mut self, s: Slot) -> usize {
        self.slots.push(s);
        self.slots.len() - 1
    }

    fn find(&mut self, mut i: usize) -> usize {
        while let Slot::Link(j) = self.slots[i] {
            i = j;
        }
        i
    }

    fn show(&mut self, i: usize) -> String {
        let r = self.find(i);
        match self.slots[r] {
            Slot::Known(t) => format!("`{}`", t.name()),
            Slot::Int => "an integer".into(),
            Slot::Float => "a float".into(),
            _ => "an unknown type".into(),
        }
    }

    /// Makes `a` and `b` the same type; reports a mismatch at `span`.
    fn unify(&mut self, a: usize, b: usize, span: Rng) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let (sa, sb) = (self.slots[ra], self.slots[rb]);
        use Slot::*;
        let merged = match (sa, sb) {
            (Known(Ty::Never), _) | (Any, _) => Some(sb),
            (_, Known(Ty::Never)) | (_, Any) => Some(sa),
            (Known(x), Known(y)) => (x == y).then_some(sa),
            (Int, Int) | (Float, Float) => Some(sa),
            (Int, Known(t)) | (Known(t), Int) => t.is_int().then_some(Known(t)),
            (Float, Known(Ty::F32)) | (Known(Ty::F32), Float) => Some(Known(Ty::F32)),
            _ => None,
        };
        match merged {
            Some(m) => {
                self.slots[ra] = Link(rb);
                self.slots[rb] = m;
            }
            None => {
                let (x, y) = (self.show(a), self.show(b));
                self.errors.push(
                    span,
                    format!("mismatched types: {x} and {y}; convert explicitly with `as`"),
                );
            }
        }
    }

    fn known(&mut self, id: usize, t: Ty, span: Rng) {
        let k = self.fresh(Slot::Known(t));
        self.unify(id, k, span);
    }

    fn lookup(&self, name: &str) -> Option<(Binding, usize)> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _, _)| n == name)
            .map(|(_, b, s)| (*b, *s))
    }

    fn array_elem(&self, b: Binding) -> Option<Ty> {
        match b {
            Binding::Param(i) => match self.ast.params[i].kind {
                ParamKind::SliceU32 => Some(Ty::U32),
                ParamKind::SliceI32 => Some(Ty::I32),
                ParamKind::SliceF32 => Some(Ty::F32),
                _ => None,
            },
            _ => None,
        }
    }

    fn block(&mut self, b: &Block) -> usize {
        self.scopes.push(Vec::new());
        let mut diverges = false;
        for s in &b.stmts {
            match s {
                Stmt::Let {
                    id,
                    name,
                    span,
                    ty,
                    init,
                } => {
                    let v = self.expr(init);
                    self.unify(*id, v, init.span);
                    if let Some(t) = ty {
                        self.known(*id, *t, *span);
                    }
                    self.scopes.last_mut().expect("scope").push((
                        name.clone(),
                        Binding::Let(*id),
                        *id,
                    ));
                }
                Stmt::Expr(e) => {
                    let v = self.expr(e);
                    if matches!(e.kind, ExprKind::Return(_)) {
                        diverges = true;
                    } else {
                        self.known(v, Ty::Unit, e.span);
                    }
                }
            }
        }
        let r = match &b.tail {
            Some(t) => self.expr(t),
            None => self.fresh(Slot::Known(if diverges { Ty::Never } else { Ty::Unit })),
        };
        self.scopes.pop();
        r
    }

    fn defer(&mut self, id: usize, class: Class, span: Rng, what: impl Into<String>) {
        self.deferred.push((id, class, span, what.into()));
    }

    fn expr(&mut self, e: &Expr) -> usize {
        let id = e.id;
        let span = e.span;
        match &e.kind {
            ExprKind::Error => {}
            ExprKind::Lit(Lit::Bool(_)) => self.known(id, Ty::Bool, span),
            ExprKind::Lit(Lit::Int(_, t)) => match t {
                Some(t) => self.known(id, *t, span),
                None => self.slots[id] = Slot::Int,
            },
            ExprKind::Lit(Lit::Float(_)) => self.slots[id] = Slot::Float,
            ExprKind::Const(c) => {
                let t = match c {
                    Const::Max(t) | Const::Min(t) => *t,
                    _ => Ty::F32,
                };
                self.known(id, t, span);
            }
            ExprKind::Var(name) => match self.lookup(name) {
                Some((b, s)) => {
                    if self.array_elem(b).is_some() {
                        self.errors.push(
                            span,
                            format!("array parameter `{name}` can only be indexed: `{name}[i as usize]`"),
                        );
                    }
                    self.vars.insert(id, b);
                    self.unify(id, s, span);
                }
                None => self.errors.push(
                    span,
                    format!(
                        "cannot find `{name}`: only parameters and `let` bindings are visible \
                         (constants and statics are not translated to CUDA; pass them as parameters)"
                    ),
                ),
            },
            ExprKind::Unary(op, inner) => {
                let v = self.expr(inner);
                self.unify(id, v, span);
                match op {
                    UnOp::Not => self.defer(id, Class::BoolOrInt, span, "`!`"),
                    UnOp::Neg => self.defer(id, Class::SignedOrFloat, span, "unary `-`"),
                }
            }
            ExprKind::Binary(op, l, r) => {
                let (lv, rv) = (self.expr(l), self.expr(r));
                use BinOp::*;
                match op {
                    Add | Sub | Mul | Div | Rem => {
                        self.unify(lv, rv, span);
                        self.unify(id, lv, span);
                        self.defer(id, Class::Numeric, span, "arithmetic");
                    }
                    BitAnd | BitOr | BitXor => {
                        self.unify(lv, rv, span);
                        self.unify(id, lv, span);
                        self.defer(id, Class::BoolOrInt, span, "bitwise operators");
                    }
                    Shl | Shr => {
                        self.unify(id, lv, span);
                        self.defer(lv, Class::Integer, l.span, "shifts");
                        self.defer(rv, Class::Integer, r.span, "shift amounts");
                    }
                    Eq | Ne | Lt | Le | Gt | Ge => {
                        self.unify(lv, rv, span);
                        self.defer(lv, Class::Scalar, span, "comparisons");
                        self.known(id, Ty::Bool, span);
                    }
                    And | Or => {
                        self.known(lv, Ty::Bool, l.span);
                        self.known(rv, Ty::Bool, r.span);
                        self.known(id, Ty::Bool, span);
                    }
                }
            }
            ExprKind::Cast(inner, t) => {
                let v = self.expr(inner);
                self.casts.push((v, *t, span));
                self.defer(v, Class::CastSource, inner.span, "`as` casts");
                self.known(id, *t, span);
            }
            ExprKind::If(c, then, els) => {
                let cv = self.expr(c);
                self.known(cv, Ty::Bool, c.span);
                let tv = self.block(then);
                match els {
                    Some(e) => {
                        let ev = self.expr(e);
                        self.unify(tv, ev, span);
                        self.unify(id, tv, span);
                    }
                    None => {
                        self.known(tv, Ty::Unit, span);
                        self.known(id, Ty::Unit, span);
                    }
                }
            }
            ExprKind::Block(b) => {
                let v = self.block(b);
                self.unify(id, v, span);
            }
            ExprKind::Index(name, nspan, idx) => {
                let iv = self.expr(idx);
                self.defer(iv, Class::Integer, idx.span, "array indices");
                let found = self.lookup(name).map(|(b, _)| b);
                match found.and_then(|b| Some((b, self.array_elem(b)?))) {
                    Some((b, t)) => {
                        self.vars.insert(id, b);
                        self.known(id, t, span);
                    }
                    None => self.errors.push(
                        *nspan,
                        format!("`{name}` is not an array parameter: only `&[u32]`, `&[i32]` and `&[f32]` parameters can be indexed"),
                    ),
                }
            }
            ExprKind::Call(f, args, hint) => {
                let vs: Vec<usize> = args.iter().map(|a| self.expr(a)).collect();
                match f {
                    Func::Min | Func::Max => {
                        self.unify(vs[0], vs[1], span);
                        self.unify(id, vs[0], span);
                        self.defer(id, Class::Numeric, span, "`min`/`max`");
                    }
                    Func::Abs => {
                        self.unify(id, vs[0], span);
                        self.defer(id, Class::SignedOrFloat, span, "`abs`");
                    }
                    Func::Powf | Func::Math(_) => {
                        for (v, a) in vs.iter().zip(args) {
                            self.known(*v, Ty::F32, a.span);
                        }
                        self.known(id, Ty::F32, span);
                    }
                }
                if let Some(t) = hint {
                    self.known(id, *t, span);
                }
            }
            ExprKind::Return(v) => {
                let vv = self.expr(v);
                self.known(vv, self.ast.ret, v.span);
                self.known(id, Ty::Never, span);
            }
        }
        id
    }

    fn resolve(&mut self, i: usize) -> Ty {
        self.try_resolve(i).unwrap_or(Ty::Unit)
    }

    /// The type of slot `i` after defaulting; `None` if it depends only on rejected syntax.
    fn try_resolve(&mut self, i: usize) -> Option<Ty> {
        let r = self.find(i);
        match self.slots[r] {
            Slot::Known(t) => Some(t),
            Slot::Int => Some(Ty::I32),
            Slot::Float => Some(Ty::F32),
            _ => None,
        }
    }

    fn finish(mut self) -> Typed {
        for (id, class, span, what) in std::mem::take(&mut self.deferred) {
            let Some(t) = self.try_resolve(id) else {
                continue;
            };
            let ok = match class {
                Class::Numeric => t.is_int() || t == Ty::F32,
                Class::Integer => t.is_int(),
                Class::BoolOrInt => t.is_int() || t == Ty::Bool,
                Class::SignedOrFloat => t.is_signed_int() || t == Ty::F32,
                Class::Scalar => !matches!(t, Ty::Unit | Ty::Never),
                Class::CastSource => !matches!(t, Ty::Unit),
            };
            if !ok {
                let allowed = match class {
                    Class::Numeric => "integer or `f32` operands",
                    Class::Integer => "integers",
                    Class::BoolOrInt => "integer or `bool` operands",
                    Class::SignedOrFloat => "signed integer or `f32` operands",
                    Class::Scalar | Class::CastSource => "scalar operands",
                };
                self.errors
                    .push(span, format!("{what} need {allowed}, found `{}`", t.name()));
            }
        }
        for (v, to, span) in std::mem::take(&mut self.casts) {
            let Some(from) = self.try_resolve(v) else {
                continue;
            };
            if to == Ty::Bool && from != Ty::Bool {
                self.errors.push(
                    span,
                    format!(
                        "cannot cast `{}` as `bool`: compare instead (`x != 0`)",
                        from.name()
                    ),
                );
            }
        }
        let n = self.ast.n_ids;
        let tys = (0..n).map(|i| self.resolve(i)).collect();
        Typed {
            tys,
            vars: self.vars,
        }
    }
}
