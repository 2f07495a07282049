//! Grad: symbolic derivatives of a checked score function (variants.md section 12).
//!
//! For each differentiation target (the score, every `f32` parameter, every indexing `a[i]` of
//! an `&[f32]` parameter) the pass builds a new function body in the same subset, with the
//! same parameters, returning `d s' / d target`; it is then checked, lowered and emitted (or
//! evaluated) like any user function. Forward mode: every `f32` `let` gets a companion `let`
//! holding its derivative, so the derivative of a name is a name, and conditions are kept, so
//! `if`, `min`/`max` and `abs` differentiate the branch the forward takes. Integer and `bool`
//! subexpressions are constants. An indexed table element also gets an index function (the
//! index expression with every `let` inlined, as `i64`): the gradient goes to that element.

use crate::check::{Binding, Typed};
use crate::parse::{
    BinOp, Block, Expr, ExprKind, FnAst, Func, IndexParam, Lit, Role, Stmt, Ty, UnOp, UserParam,
};
use crate::{ParamKind, Rng};
use std::collections::HashMap;

/// What a derivative function differentiates with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The raw score `s`.
    Score,
    /// The `f32` user parameter with this index in `FnAst::params`.
    Scalar(usize),
    /// One indexing of an `&[f32]` user parameter: the parameter's index and the id of the
    /// `Index` expression.
    Elem(usize, usize),
}

/// A derivative function and, for a table element, the function giving its index.
#[derive(Debug)]
pub(crate) struct GradAst {
    pub target: Target,
    pub partial: FnAst,
    pub index: Option<FnAst>,
}

/// A derivative during construction: symbolic 0 and 1 fold away.
enum Dx {
    Zero,
    One,
    E(Expr),
}

const NOT_DIFF: &str = "is not differentiable, so `#[score(backward)]` cannot derive the \
backward of this function";

struct Diff<'a> {
    ast: &'a FnAst,
    typed: &'a Typed,
    /// `None`: the checking pass, where every target has derivative 1 and errors are kept.
    target: Option<Target>,
    next_id: usize,
    prefix: String,
    /// Derivative name of each `f32` `let` (by id), `None` when its derivative is 0.
    dnames: HashMap<usize, Option<String>>,
    /// Per expression id: whether its value depends on the score or a float parameter.
    dep: Vec<bool>,
    dep_let: HashMap<usize, bool>,
    errors: Vec<(Rng, String)>,
}

/// Derives every target of a checked score function; the errors carry the span of each
/// expression that cannot be differentiated.
pub(crate) fn derive(ast: &FnAst, typed: &Typed) -> Result<Vec<GradAst>, Vec<(Rng, String)>> {
    let mut names = Vec::new();
    names.extend(ast.index.iter().map(|p| p.name.clone()));
    names.extend(ast.params.iter().map(|p| p.name.clone()));
    let_names(&ast.body, &mut names);
    let prefix = (0..)
        .map(|k| {
            if k == 0 {
                "d_".to_string()
            } else {
                format!("d{k}_")
            }
        })
        .find(|p| !names.iter().any(|n| n.starts_with(p.as_str())))
        .expect("finitely many names");
    let mut d = Diff {
        ast,
        typed,
        target: None,
        next_id: 0,
        prefix,
        dnames: HashMap::new(),
        dep: vec![false; ast.n_ids],
        dep_let: HashMap::new(),
        errors: Vec::new(),
    };
    d.scan_block(&ast.body);
    let _ = d.d_block(&ast.body, true);
    if !d.errors.is_empty() {
        return Err(d.errors);
    }
    let mut out = Vec::new();
    for target in targets(ast, typed) {
        d.reset(Some(target));
        let body = d.d_block(&ast.body, true);
        let partial = d.fn_ast(suffix(ast, typed, target), Ty::F32, body);
        let index = match target {
            Target::Elem(p, id) => {
                d.reset(Some(target));
                let idx = find_index(&ast.body, id).expect("target found in the body");
                let lets = let_inits(&ast.body);
                let Some(e) = d.inline(idx, &lets) else {
                    let name = &ast.params[p].name;
                    return Err(vec![(
                        idx.span,
                        format!("the index of the learnable table `{name}` needs a `return` to compute: `#[score(backward)]` evaluates the index on its own; compute it without `return`"),
                    )]);
                };
                let cast = d.mk(idx.span, ExprKind::Cast(Box::new(e), Ty::I64));
                let body = Block {
                    stmts: Vec::new(),
                    tail: Some(Box::new(cast)),
                };
                Some(d.fn_ast(
                    format!("{}_index", suffix(ast, typed, target)),
                    Ty::I64,
                    body,
                ))
            }
            _ => None,
        };
        out.push(GradAst {
            target,
            partial,
            index,
        });
    }
    // Parameter names are unique, but `t_0` next to a table `t` would reuse `f_grad_t_0`.
    let mut seen = std::collections::HashSet::new();
    for f in out
        .iter()
        .flat_map(|g| std::iter::once(&g.partial).chain(&g.index))
    {
        if !seen.insert(f.name.as_str()) {
            let span = ast
                .body
                .tail
                .as_ref()
                .map_or_else(|| Rng::from(proc_macro2::Span::call_site()), |t| t.span);
            return Err(vec![(span, format!("two derivative functions would be named `{}`: rename a parameter (derivatives are named `<fn>_grad_score`, `<fn>_grad_<param>`, `<fn>_grad_<table>_<k>[_index]`)", f.name))]);
        }
    }
    Ok(out)
}

/// The name of a derivative function: `<fn>_grad_score`, `<fn>_grad_<param>`,
/// `<fn>_grad_<param>_<k>` (the `k`-th indexing of a table, in source order).
fn suffix(ast: &FnAst, typed: &Typed, t: Target) -> String {
    match t {
        Target::Score => format!("{}_grad_score", ast.name),
        Target::Scalar(p) => format!("{}_grad_{}", ast.name, ast.params[p].name),
        Target::Elem(p, id) => {
            let mut ids = Vec::new();
            index_ids(&ast.body, typed, p, &mut ids);
            let k = ids.iter().position(|i| *i == id).unwrap_or(0);
            format!("{}_grad_{}_{k}", ast.name, ast.params[p].name)
        }
    }
}

fn targets(ast: &FnAst, typed: &Typed) -> Vec<Target> {
    let mut t = vec![Target::Score];
    for (i, p) in ast.params.iter().enumerate() {
        match p.kind {
            ParamKind::F32 => t.push(Target::Scalar(i)),
            ParamKind::SliceF32 => {
                let mut ids = Vec::new();
                index_ids(&ast.body, typed, i, &mut ids);
                t.extend(ids.into_iter().map(|id| Target::Elem(i, id)));
            }
            _ => {}
        }
    }
    t
}

/// Calls `f` on every expression of a block, outer before inner, in source order.
fn walk_block<'b>(b: &'b Block, f: &mut dyn FnMut(&'b Expr)) {
    for s in &b.stmts {
        match s {
            Stmt::Let { init, .. } => walk(init, f),
            Stmt::Expr(e) => walk(e, f),
        }
    }
    if let Some(t) = &b.tail {
        walk(t, f);
    }
}

fn walk<'b>(e: &'b Expr, f: &mut dyn FnMut(&'b Expr)) {
    f(e);
    match &e.kind {
        ExprKind::Unary(_, a) | ExprKind::Cast(a, _) | ExprKind::Return(a) => walk(a, f),
        ExprKind::Index(_, _, a) => walk(a, f),
        ExprKind::Binary(_, a, b) => {
            walk(a, f);
            walk(b, f);
        }
        ExprKind::If(c, t, e) => {
            walk(c, f);
            walk_block(t, f);
            if let Some(e) = e {
                walk(e, f);
            }
        }
        ExprKind::Block(b) => walk_block(b, f),
        ExprKind::Call(_, args, _) => args.iter().for_each(|a| walk(a, f)),
        ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Const(_) | ExprKind::Error => {}
    }
}

fn index_ids(b: &Block, typed: &Typed, param: usize, out: &mut Vec<usize>) {
    walk_block(b, &mut |e| {
        if matches!(&e.kind, ExprKind::Index(..))
            && typed.vars.get(&e.id) == Some(&Binding::Param(param))
        {
            out.push(e.id);
        }
    });
}

fn find_index(b: &Block, id: usize) -> Option<&Expr> {
    let mut found = None;
    walk_block(b, &mut |e| {
        if e.id == id {
            if let ExprKind::Index(_, _, idx) = &e.kind {
                found = Some(&**idx);
            }
        }
    });
    found
}

fn let_inits(b: &Block) -> HashMap<usize, &Expr> {
    let mut m = HashMap::new();
    fn go<'b>(b: &'b Block, m: &mut HashMap<usize, &'b Expr>) {
        for s in &b.stmts {
            if let Stmt::Let { id, init, .. } = s {
                m.insert(*id, init);
            }
        }
    }
    go(b, &mut m);
    walk_block(b, &mut |e| match &e.kind {
        ExprKind::Block(b) | ExprKind::If(_, b, _) => go(b, &mut m),
        _ => {}
    });
    m
}

fn let_names(b: &Block, out: &mut Vec<String>) {
    let mut blocks = vec![b];
    walk_block(b, &mut |e| match &e.kind {
        ExprKind::Block(b) | ExprKind::If(_, b, _) => blocks.push(b),
        _ => {}
    });
    for b in blocks {
        for s in &b.stmts {
            if let Stmt::Let { name, .. } = s {
                out.push(name.clone());
            }
        }
    }
}

/// `{ e }`.
fn block_of(e: Expr) -> Block {
    Block {
        stmts: Vec::new(),
        tail: Some(Box::new(e)),
    }
}

fn float(v: f32) -> ExprKind {
    ExprKind::Lit(Lit::Float(v))
}

impl Diff<'_> {
    fn reset(&mut self, target: Option<Target>) {
        self.target = target;
        self.next_id = 0;
        self.dnames.clear();
    }

    fn mk(&mut self, span: Rng, kind: ExprKind) -> Expr {
        self.next_id += 1;
        Expr {
            id: self.next_id - 1,
            span,
            kind,
        }
    }

    fn fn_ast(&mut self, name: String, ret: Ty, body: Block) -> FnAst {
        FnAst {
            name,
            kind: crate::FnKind::Score,
            index: self
                .ast
                .index
                .iter()
                .map(|p| IndexParam {
                    name: p.name.clone(),
                    ty: p.ty,
                    role: p.role,
                    ok: p.ok,
                })
                .collect(),
            params: self
                .ast
                .params
                .iter()
                .map(|p| UserParam {
                    name: p.name.clone(),
                    kind: p.kind,
                })
                .collect(),
            ret,
            ret_ok: true,
            body,
            bad_params: Vec::new(),
            sig_complete: true,
            n_ids: self.next_id,
        }
    }

    fn ty(&self, e: &Expr) -> Ty {
        self.typed.ty(e.id)
    }

    fn error(&mut self, span: Rng, msg: String) {
        if self.target.is_none() {
            self.errors.push((span, msg));
        }
    }

    /// The target a leaf stands for: the score, an `f32` parameter, a table element.
    fn leaf(&self, e: &Expr) -> Option<Target> {
        let b = self.typed.vars.get(&e.id)?;
        match (&e.kind, b) {
            (ExprKind::Var(_), Binding::Index(i)) => {
                (self.ast.index[*i].role == Role::Score).then_some(Target::Score)
            }
            (ExprKind::Var(_), Binding::Param(i)) => {
                (self.ast.params[*i].kind == ParamKind::F32).then_some(Target::Scalar(*i))
            }
            (ExprKind::Index(..), Binding::Param(i)) => {
                (self.ast.params[*i].kind == ParamKind::SliceF32).then_some(Target::Elem(*i, e.id))
            }
            _ => None,
        }
    }

    fn seed(&self, t: Target) -> Dx {
        match self.target {
            None => Dx::One,
            Some(x) if x == t => Dx::One,
            Some(_) => Dx::Zero,
        }
    }

    /// Records which expressions and `let`s depend on a differentiation target.
    fn scan_block(&mut self, b: &Block) -> bool {
        for s in &b.stmts {
            match s {
                Stmt::Let { id, init, .. } => {
                    let d = self.scan(init);
                    self.dep_let.insert(*id, d);
                }
                Stmt::Expr(e) => {
                    self.scan(e);
                }
            }
        }
        b.tail.as_ref().is_some_and(|t| self.scan(t))
    }

    fn scan(&mut self, e: &Expr) -> bool {
        let d = match &e.kind {
            ExprKind::Lit(_) | ExprKind::Const(_) | ExprKind::Error => false,
            ExprKind::Var(_) => match self.typed.vars.get(&e.id) {
                Some(Binding::Let(id)) => self.dep_let.get(id).copied().unwrap_or(false),
                _ => self.leaf(e).is_some(),
            },
            ExprKind::Index(_, _, i) => self.scan(i) | self.leaf(e).is_some(),
            ExprKind::Unary(_, a) | ExprKind::Cast(a, _) => self.scan(a),
            ExprKind::Binary(_, a, b) => self.scan(a) | self.scan(b),
            ExprKind::Call(_, args, _) => args.iter().fold(false, |acc, a| self.scan(a) | acc),
            ExprKind::If(c, t, e) => {
                self.scan(c) | self.scan_block(t) | e.as_ref().is_some_and(|e| self.scan(e))
            }
            ExprKind::Block(b) => self.scan_block(b),
            ExprKind::Return(v) => {
                self.scan(v);
                false
            }
        };
        self.dep[e.id] = d;
        d
    }

    fn emit(&mut self, d: Dx, span: Rng) -> Expr {
        match d {
            Dx::Zero => self.mk(span, float(0.0)),
            Dx::One => self.mk(span, float(1.0)),
            Dx::E(e) => e,
        }
    }

    fn bin(&mut self, op: BinOp, a: Expr, b: Expr) -> Expr {
        let span = a.span;
        self.mk(span, ExprKind::Binary(op, Box::new(a), Box::new(b)))
    }

    fn call(&mut self, f: &'static str, a: Expr) -> Expr {
        let span = a.span;
        self.mk(span, ExprKind::Call(Func::Math(f), vec![a], None))
    }

    fn lit(&mut self, span: Rng, v: f32) -> Expr {
        self.mk(span, float(v))
    }

    fn add(&mut self, a: Dx, b: Dx, span: Rng) -> Dx {
        match (a, b) {
            (Dx::Zero, x) | (x, Dx::Zero) => x,
            (a, b) => {
                let (a, b) = (self.emit(a, span), self.emit(b, span));
                Dx::E(self.bin(BinOp::Add, a, b))
            }
        }
    }

    fn neg(&mut self, a: Dx, span: Rng) -> Dx {
        match a {
            Dx::Zero => Dx::Zero,
            Dx::One => Dx::E(self.lit(span, -1.0)),
            Dx::E(e) => Dx::E(self.mk(span, ExprKind::Unary(UnOp::Neg, Box::new(e)))),
        }
    }

    fn sub(&mut self, a: Dx, b: Dx, span: Rng) -> Dx {
        match (a, b) {
            (x, Dx::Zero) => x,
            (Dx::Zero, x) => self.neg(x, span),
            (a, b) => {
                let (a, b) = (self.emit(a, span), self.emit(b, span));
                Dx::E(self.bin(BinOp::Sub, a, b))
            }
        }
    }

    /// `d * factor`; the factor (a value, never 0 symbolically) is built only when needed.
    fn scale(&mut self, d: Dx, factor: impl FnOnce(&mut Self) -> Expr) -> Dx {
        match d {
            Dx::Zero => Dx::Zero,
            Dx::One => Dx::E(factor(self)),
            Dx::E(e) => {
                let f = factor(self);
                Dx::E(self.bin(BinOp::Mul, e, f))
            }
        }
    }

    /// `d / divisor`.
    fn over(&mut self, d: Dx, span: Rng, divisor: impl FnOnce(&mut Self) -> Expr) -> Dx {
        match d {
            Dx::Zero => Dx::Zero,
            d => {
                let n = self.emit(d, span);
                let q = divisor(self);
                Dx::E(self.bin(BinOp::Div, n, q))
            }
        }
    }

    /// `if cond { a } else { b }` of two derivatives, or 0 when both are 0.
    fn select(&mut self, span: Rng, cond: impl FnOnce(&mut Self) -> Expr, a: Dx, b: Dx) -> Dx {
        if matches!((&a, &b), (Dx::Zero, Dx::Zero)) {
            return Dx::Zero;
        }
        let c = cond(self);
        let (a, b) = (self.emit(a, span), self.emit(b, span));
        let (ta, tb) = (block_of(a), block_of(b));
        let els = self.mk(span, ExprKind::Block(tb));
        Dx::E(self.mk(span, ExprKind::If(Box::new(c), ta, Some(Box::new(els)))))
    }
}

/// What the error messages call the differentiation targets.
const TARGETS: &str = "the score or a learnable `f32` parameter";

impl Diff<'_> {
    /// A block with a derivative `let` after every `f32` `let`; its tail is the derivative
    /// of the original tail (`deriv`) or a copy of it.
    fn d_block(&mut self, b: &Block, deriv: bool) -> Block {
        let mut stmts = Vec::new();
        for s in &b.stmts {
            match s {
                Stmt::Let {
                    id,
                    name,
                    span,
                    ty,
                    init,
                } => {
                    // The derivative comes first: its formula reads the names the init
                    // reads, which the value `let` may shadow (`let x = x * x;`). Its name is
                    // unique per `let`, so no other derivative shadows it.
                    if self.typed.ty(*id) == Ty::F32 {
                        match self.d(init) {
                            Dx::Zero => {
                                self.dnames.insert(*id, None);
                            }
                            d => {
                                let dn = format!("{}{name}_{id}", self.prefix);
                                let init = self.emit(d, init.span);
                                let did = self.mk(*span, ExprKind::Error).id;
                                stmts.push(Stmt::Let {
                                    id: did,
                                    name: dn.clone(),
                                    span: *span,
                                    ty: None,
                                    init,
                                });
                                self.dnames.insert(*id, Some(dn));
                            }
                        }
                    }
                    let copy = self.tx(init);
                    let new_id = self.mk(*span, ExprKind::Error).id;
                    stmts.push(Stmt::Let {
                        id: new_id,
                        name: name.clone(),
                        span: *span,
                        ty: *ty,
                        init: copy,
                    });
                }
                Stmt::Expr(e) => {
                    let e = self.tx(e);
                    stmts.push(Stmt::Expr(e));
                }
            }
        }
        let tail = b.tail.as_ref().map(|t| {
            let e = if deriv {
                let d = self.d(t);
                self.emit(d, t.span)
            } else {
                self.tx(t)
            };
            Box::new(e)
        });
        Block { stmts, tail }
    }

    /// A copy of `e` (fresh ids) in which every `return v` returns the derivative of `v`.
    fn tx(&mut self, e: &Expr) -> Expr {
        let kind = match &e.kind {
            ExprKind::Lit(l) => ExprKind::Lit(match l {
                Lit::Int(v, t) => Lit::Int(*v, *t),
                Lit::Float(v) => Lit::Float(*v),
                Lit::Bool(v) => Lit::Bool(*v),
            }),
            ExprKind::Var(n) => ExprKind::Var(n.clone()),
            ExprKind::Const(c) => ExprKind::Const(*c),
            ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(self.tx(a))),
            ExprKind::Binary(op, a, b) => {
                ExprKind::Binary(*op, Box::new(self.tx(a)), Box::new(self.tx(b)))
            }
            ExprKind::Cast(a, t) => ExprKind::Cast(Box::new(self.tx(a)), *t),
            ExprKind::If(c, t, els) => ExprKind::If(
                Box::new(self.tx(c)),
                self.d_block(t, false),
                els.as_ref().map(|x| Box::new(self.tx(x))),
            ),
            ExprKind::Block(b) => ExprKind::Block(self.d_block(b, false)),
            ExprKind::Index(n, r, i) => ExprKind::Index(n.clone(), *r, Box::new(self.tx(i))),
            ExprKind::Call(f, args, h) => {
                ExprKind::Call(*f, args.iter().map(|a| self.tx(a)).collect(), *h)
            }
            ExprKind::Return(v) => {
                let d = self.d(v);
                ExprKind::Return(Box::new(self.emit(d, v.span)))
            }
            ExprKind::Error => ExprKind::Error,
        };
        self.mk(e.span, kind)
    }

    /// The derivative of an `f32` expression (other types: `tx`, for their `return`s).
    fn d(&mut self, e: &Expr) -> Dx {
        let span = e.span;
        if self.ty(e) != Ty::F32 {
            return Dx::E(self.tx(e));
        }
        if let Some(t) = self.leaf(e) {
            if let (ExprKind::Index(name, _, idx), Target::Elem(..)) = (&e.kind, t) {
                if self.dep[idx.id] {
                    self.error(
                        idx.span,
                        format!("the index of the learnable table `{name}` is computed from {TARGETS}: a step function {NOT_DIFF}; index with integers that do not depend on them (`{name}[h as usize]`)"),
                    );
                }
            }
            return self.seed(t);
        }
        match &e.kind {
            ExprKind::Var(_) => match self.typed.vars.get(&e.id) {
                Some(Binding::Let(id)) => match self.dnames.get(id) {
                    Some(Some(n)) => Dx::E(self.mk(span, ExprKind::Var(n.clone()))),
                    _ => Dx::Zero,
                },
                _ => Dx::Zero,
            },
            ExprKind::Unary(UnOp::Neg, a) => {
                let da = self.d(a);
                self.neg(da, span)
            }
            ExprKind::Binary(op, a, b) => self.d_binary(*op, a, b, span),
            ExprKind::Cast(a, _) if self.ty(a) == Ty::F32 => self.d(a),
            ExprKind::Cast(a, _) => {
                if self.dep[a.id] {
                    self.error(
                        span,
                        format!("converting an integer or `bool` computed from {TARGETS} to `f32` makes a step function, which {NOT_DIFF}; compare in an `if` instead (its derivative is that of the branch taken)"),
                    );
                }
                Dx::Zero
            }
            ExprKind::If(c, t, els) => {
                let c = self.tx(c);
                let t = self.d_block(t, true);
                let els = els.as_ref().map(|x| {
                    let d = self.d(x);
                    Box::new(self.emit(d, x.span))
                });
                Dx::E(self.mk(span, ExprKind::If(Box::new(c), t, els)))
            }
            ExprKind::Block(b) => {
                let b = self.d_block(b, true);
                Dx::E(self.mk(span, ExprKind::Block(b)))
            }
            ExprKind::Call(f, args, _) => self.d_call(*f, args, span),
            _ => Dx::Zero,
        }
    }

    fn d_binary(&mut self, op: BinOp, a: &Expr, b: &Expr, span: Rng) -> Dx {
        match op {
            BinOp::Add | BinOp::Sub => {
                let (da, db) = (self.d(a), self.d(b));
                if op == BinOp::Add {
                    self.add(da, db, span)
                } else {
                    self.sub(da, db, span)
                }
            }
            BinOp::Mul => {
                let (da, db) = (self.d(a), self.d(b));
                let l = self.scale(da, |s| s.tx(b));
                let r = self.scale(db, |s| s.tx(a));
                self.add(l, r, span)
            }
            BinOp::Div => {
                // (a/b)' = (a' - (a/b) b') / b
                let (da, db) = (self.d(a), self.d(b));
                let q = self.scale(db, |s| {
                    let (x, y) = (s.tx(a), s.tx(b));
                    s.bin(BinOp::Div, x, y)
                });
                let n = self.sub(da, q, span);
                self.over(n, span, |s| s.tx(b))
            }
            BinOp::Rem => {
                if self.dep[a.id] || self.dep[b.id] {
                    self.error(span, format!("`%` of values computed from {TARGETS} jumps where the quotient crosses an integer: it {NOT_DIFF}"));
                }
                Dx::Zero
            }
            _ => Dx::Zero,
        }
    }

    fn d_call(&mut self, f: Func, args: &[Expr], span: Rng) -> Dx {
        let a = &args[0];
        match f {
            Func::Min | Func::Max => {
                let b = &args[1];
                let (da, db) = (self.d(a), self.d(b));
                // At a tie the forward's value is both arguments; take the first's derivative.
                let op = if f == Func::Min { BinOp::Le } else { BinOp::Ge };
                self.select(
                    span,
                    |s| {
                        let (x, y) = (s.tx(a), s.tx(b));
                        s.bin(op, x, y)
                    },
                    da,
                    db,
                )
            }
            Func::Abs => {
                let da = self.d(a);
                // sign(a), with sign(0) = 1: `abs(0) = 0` takes the non-negative branch.
                self.scale(da, |s| {
                    let x = s.tx(a);
                    let z = s.lit(span, 0.0);
                    let c = s.bin(BinOp::Ge, x, z);
                    let (p, m) = (s.lit(span, 1.0), s.lit(span, -1.0));
                    let (tp, tm) = (block_of(p), block_of(m));
                    let els = s.mk(span, ExprKind::Block(tm));
                    s.mk(span, ExprKind::If(Box::new(c), tp, Some(Box::new(els))))
                })
            }
            Func::Powf => {
                // (a^b)' = b a^(b-1) a' + a^b ln(a) b'
                let b = &args[1];
                let (da, db) = (self.d(a), self.d(b));
                let l = self.scale(da, |s| {
                    let (x, y, y2) = (s.tx(a), s.tx(b), s.tx(b));
                    let one = s.lit(span, 1.0);
                    let ym1 = s.bin(BinOp::Sub, y2, one);
                    let p = s.mk(span, ExprKind::Call(Func::Powf, vec![x, ym1], None));
                    s.bin(BinOp::Mul, y, p)
                });
                let r = self.scale(db, |s| {
                    let (x, y, x2) = (s.tx(a), s.tx(b), s.tx(a));
                    let p = s.mk(span, ExprKind::Call(Func::Powf, vec![x, y], None));
                    let ln = s.call("logf", x2);
                    s.bin(BinOp::Mul, p, ln)
                });
                self.add(l, r, span)
            }
            Func::Math(name) => self.d_math(name, a, span),
        }
    }

    fn d_math(&mut self, name: &'static str, a: &Expr, span: Rng) -> Dx {
        const LN2: f32 = std::f32::consts::LN_2;
        const LN10: f32 = std::f32::consts::LN_10;
        let da = self.d(a);
        match name {
            "expf" | "exp2f" => self.scale(da, |s| {
                let x = s.tx(a);
                let e = s.call(name, x);
                if name == "expf" {
                    e
                } else {
                    let l = s.lit(span, LN2);
                    s.bin(BinOp::Mul, e, l)
                }
            }),
            "logf" | "log2f" | "log10f" => self.over(da, span, |s| {
                let x = s.tx(a);
                match name {
                    "logf" => x,
                    _ => {
                        let l = s.lit(span, if name == "log2f" { LN2 } else { LN10 });
                        s.bin(BinOp::Mul, x, l)
                    }
                }
            }),
            "sqrtf" => self.over(da, span, |s| {
                let two = s.lit(span, 2.0);
                let x = s.tx(a);
                let r = s.call("sqrtf", x);
                s.bin(BinOp::Mul, two, r)
            }),
            "tanhf" => self.scale(da, |s| {
                // 1 - tanh(a)^2
                let (x, y) = (s.tx(a), s.tx(a));
                let (t1, t2) = (s.call("tanhf", x), s.call("tanhf", y));
                let sq = s.bin(BinOp::Mul, t1, t2);
                let one = s.lit(span, 1.0);
                s.bin(BinOp::Sub, one, sq)
            }),
            "sinf" => self.scale(da, |s| {
                let x = s.tx(a);
                s.call("cosf", x)
            }),
            "cosf" => self.scale(da, |s| {
                let x = s.tx(a);
                let sn = s.call("sinf", x);
                s.mk(span, ExprKind::Unary(UnOp::Neg, Box::new(sn)))
            }),
            _ => {
                if !matches!(da, Dx::Zero) {
                    let rust = crate::parse::rust_math_name(name);
                    self.error(span, format!("`{rust}` of a value computed from {TARGETS} is a step function: it {NOT_DIFF}"));
                }
                Dx::Zero
            }
        }
    }

    /// The expression with every `let` it reads replaced by its definition (so it can be
    /// evaluated on its own); `None` when it contains a `return`.
    fn inline(&mut self, e: &Expr, lets: &HashMap<usize, &Expr>) -> Option<Expr> {
        let kind = match &e.kind {
            ExprKind::Var(n) => match self.typed.vars.get(&e.id) {
                Some(Binding::Let(id)) => return self.inline(lets.get(id)?, lets),
                _ => ExprKind::Var(n.clone()),
            },
            ExprKind::Return(_) => return None,
            ExprKind::Block(b) => ExprKind::Block(self.inline_block(b, lets)?),
            ExprKind::If(c, t, els) => ExprKind::If(
                Box::new(self.inline(c, lets)?),
                self.inline_block(t, lets)?,
                match els {
                    Some(x) => Some(Box::new(self.inline(x, lets)?)),
                    None => None,
                },
            ),
            ExprKind::Unary(op, a) => ExprKind::Unary(*op, Box::new(self.inline(a, lets)?)),
            ExprKind::Binary(op, a, b) => ExprKind::Binary(
                *op,
                Box::new(self.inline(a, lets)?),
                Box::new(self.inline(b, lets)?),
            ),
            ExprKind::Cast(a, t) => ExprKind::Cast(Box::new(self.inline(a, lets)?), *t),
            ExprKind::Index(n, r, i) => {
                ExprKind::Index(n.clone(), *r, Box::new(self.inline(i, lets)?))
            }
            ExprKind::Call(f, args, h) => {
                let mut v = Vec::new();
                for a in args {
                    v.push(self.inline(a, lets)?);
                }
                ExprKind::Call(*f, v, *h)
            }
            _ => return Some(self.tx(e)),
        };
        Some(self.mk(e.span, kind))
    }

    /// A block without its `let`s (every read of them is inlined).
    fn inline_block(&mut self, b: &Block, lets: &HashMap<usize, &Expr>) -> Option<Block> {
        let mut stmts = Vec::new();
        for s in &b.stmts {
            if let Stmt::Expr(e) = s {
                stmts.push(Stmt::Expr(self.inline(e, lets)?));
            }
        }
        let tail = match &b.tail {
            Some(t) => Some(Box::new(self.inline(t, lets)?)),
            None => None,
        };
        Some(Block { stmts, tail })
    }
}

/// The deepest expression nesting of a block (the recursive walks of the later stages).
pub(crate) fn depth(b: &Block) -> usize {
    fn e_depth(e: &Expr) -> usize {
        1 + match &e.kind {
            ExprKind::Unary(_, a) | ExprKind::Cast(a, _) | ExprKind::Return(a) => e_depth(a),
            ExprKind::Index(_, _, a) => e_depth(a),
            ExprKind::Binary(_, a, b) => e_depth(a).max(e_depth(b)),
            ExprKind::If(c, t, e) => e_depth(c)
                .max(depth(t))
                .max(e.as_ref().map_or(0, |e| e_depth(e))),
            ExprKind::Block(b) => depth(b),
            ExprKind::Call(_, args, _) => args.iter().map(e_depth).max().unwrap_or(0),
            ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Const(_) | ExprKind::Error => 0,
        }
    }
    let stmts = b.stmts.iter().map(|s| match s {
        Stmt::Let { init, .. } => e_depth(init),
        Stmt::Expr(e) => e_depth(e),
    });
    2 + stmts
        .chain(b.tail.iter().map(|t| e_depth(t)))
        .max()
        .unwrap_or(0)
}
