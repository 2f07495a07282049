//! Parse: `syn::ItemFn` -> spanned AST of the supported subset. Everything outside the subset
//! is reported here with the span of the offending syntax.

use crate::{rng, Errors, FnKind, ParamKind, Rng, ALLOWED};

/// Scalar types of the subset (plus `()` and `!` for statements and `return`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Ty {
    Bool,
    I32,
    U32,
    I64,
    U64,
    Isize,
    Usize,
    F32,
    Unit,
    Never,
}

impl Ty {
    pub(crate) fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "bool" => Ty::Bool,
            "i32" => Ty::I32,
            "u32" => Ty::U32,
            "i64" => Ty::I64,
            "u64" => Ty::U64,
            "isize" => Ty::Isize,
            "usize" => Ty::Usize,
            "f32" => Ty::F32,
            _ => return None,
        })
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::I32 => "i32",
            Ty::U32 => "u32",
            Ty::I64 => "i64",
            Ty::U64 => "u64",
            Ty::Isize => "isize",
            Ty::Usize => "usize",
            Ty::F32 => "f32",
            Ty::Unit => "()",
            Ty::Never => "!",
        }
    }
    pub(crate) fn is_int(self) -> bool {
        matches!(
            self,
            Ty::I32 | Ty::U32 | Ty::I64 | Ty::U64 | Ty::Isize | Ty::Usize
        )
    }
    pub(crate) fn is_signed_int(self) -> bool {
        matches!(self, Ty::I32 | Ty::I64 | Ty::Isize)
    }
    pub(crate) fn bits(self) -> u32 {
        match self {
            Ty::I32 | Ty::U32 => 32,
            _ => 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Score,
    Batch,
    Head,
    Query,
    Key,
}

/// A fixed parameter of the C signature, bound to a Rust parameter.
#[derive(Debug)]
pub(crate) struct IndexParam {
    pub name: String,
    pub ty: Ty,
    pub role: Role,
    /// False when the declared type was rejected (the body then sees an unknown type).
    pub ok: bool,
}

#[derive(Debug)]
pub(crate) struct UserParam {
    pub name: String,
    pub kind: ParamKind,
}

#[derive(Debug)]
pub(crate) struct FnAst {
    pub name: String,
    pub kind: FnKind,
    pub index: Vec<IndexParam>,
    pub params: Vec<UserParam>,
    pub ret: Ty,
    /// False when the declared return type was rejected (the body is not matched against it).
    pub ret_ok: bool,
    pub body: Block,
    /// Parameters whose type is unsupported (already reported); bound to an unknown type.
    pub bad_params: Vec<String>,
    /// False when the index parameters could not be identified: the body is not checked.
    pub sig_complete: bool,
    /// Number of expression/binding ids handed out (size of the type table).
    pub n_ids: usize,
}

#[derive(Debug)]
pub(crate) struct Block {
    pub stmts: Vec<Stmt>,
    pub tail: Option<Box<Expr>>,
}

#[derive(Debug)]
pub(crate) enum Stmt {
    Let {
        id: usize,
        name: String,
        span: Rng,
        ty: Option<Ty>,
        init: Expr,
    },
    /// An `if` or `return` used as a statement.
    Expr(Expr),
}

#[derive(Debug)]
pub(crate) struct Expr {
    pub id: usize,
    pub span: Rng,
    pub kind: ExprKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    And,
    Or,
    BitAnd,
    BitOr,
    BitXor,
    Shl,
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    /// The operator as written in Rust and in C++ (the two spell every one of them alike).
    pub(crate) fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
            And => "&&",
            Or => "||",
            BitAnd => "&",
            BitOr => "|",
            BitXor => "^",
            Shl => "<<",
            Shr => ">>",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnOp {
    Not,
    Neg,
}

/// Named constants such as `u32::MAX` or `f32::INFINITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Const {
    Max(Ty),
    Min(Ty),
    Infinity,
    NegInfinity,
    Epsilon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Min,
    Max,
    Abs,
    Powf,
    /// One-argument f32 function, with its CUDA name.
    Math(&'static str),
}

#[derive(Debug)]
pub(crate) enum Lit {
    Int(u128, Option<Ty>),
    Float(f32),
    Bool(bool),
}

#[derive(Debug)]
pub(crate) enum ExprKind {
    Lit(Lit),
    Var(String),
    Const(Const),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Cast(Box<Expr>, Ty),
    If(Box<Expr>, Block, Option<Box<Expr>>),
    Block(Block),
    /// `array[index]`; the span of the array name is kept for errors.
    Index(String, Rng, Box<Expr>),
    /// Call with an optional type from a path prefix (`u32::min`).
    Call(Func, Vec<Expr>, Option<Ty>),
    Return(Box<Expr>),
    /// Placeholder for unsupported syntax (already reported); has any type.
    Error,
}

const MATH: &[(&str, &str)] = &[
    ("exp", "expf"),
    ("exp2", "exp2f"),
    ("ln", "logf"),
    ("log2", "log2f"),
    ("log10", "log10f"),
    ("sqrt", "sqrtf"),
    ("tanh", "tanhf"),
    ("sin", "sinf"),
    ("cos", "cosf"),
    ("floor", "floorf"),
    ("ceil", "ceilf"),
];

/// The Rust method name of a one-argument math function, from its CUDA name.
pub(crate) fn rust_math_name(cuda: &str) -> &'static str {
    MATH.iter()
        .find(|(_, c)| *c == cuda)
        .map_or("?", |(r, _)| r)
}

const METHODS: &str = "`min`, `max`, `abs`, `powf`, `exp`, `exp2`, `ln`, `log2`, `log10`, \
`sqrt`, `tanh`, `sin`, `cos`, `floor`, `ceil`";

struct Parser<'e> {
    errors: &'e mut Errors,
    next_id: usize,
    bad_params: Vec<String>,
    sig_complete: bool,
}

pub(crate) fn parse_fn(item: &syn::ItemFn, kind: FnKind, errors: &mut Errors) -> FnAst {
    let mut p = Parser {
        errors,
        next_id: 0,
        bad_params: Vec::new(),
        sig_complete: true,
    };
    let sig = &item.sig;
    if let Some(c) = &sig.constness {
        p.err(rng(&c), "`const fn` is not supported: write a plain `fn`");
    }
    if let Some(a) = &sig.asyncness {
        p.err(rng(&a), "`async fn` is not supported: write a plain `fn`");
    }
    if let Some(u) = &sig.unsafety {
        p.err(rng(&u), "`unsafe fn` is not supported: write a plain `fn`");
    }
    if let Some(a) = &sig.abi {
        p.err(
            rng(&a),
            "`extern` functions are not supported: write a plain `fn`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        p.err(
            rng(&sig.generics),
            "generic parameters are not supported: use concrete types (`u32`, `f32`, `&[u32]`, ...)",
        );
    }
    if let Some(v) = &sig.variadic {
        p.err(rng(&v), "variadic parameters are not supported");
    }
    let name = sig.ident.to_string();
    if crate::emit::is_reserved(&name) {
        p.err(
            rng(&sig.ident),
            format!("`{name}` is a reserved word in CUDA C++ or of attnforge; rename the function"),
        );
    }

    let ret = if kind == FnKind::Mask {
        Ty::Bool
    } else {
        Ty::F32
    };
    let errors_before = p.errors.len();
    match &sig.output {
        syn::ReturnType::Type(_, ty) => {
            if scalar_type(ty) != Some(ret) {
                p.err(
                    rng(&ty),
                    format!("a {} function must return `{}`", kind.as_str(), ret.name()),
                );
            }
        }
        syn::ReturnType::Default => p.err(
            Rng::from(sig.paren_token.span.join()),
            format!(
                "a {} function must return `{r}`: add `-> {r}`",
                kind.as_str(),
                r = ret.name()
            ),
        ),
    }
    let ret_ok = p.errors.len() == errors_before;

    let (index, params) = p.params(sig, kind);
    let body = p.block(&item.block);
    FnAst {
        name,
        kind,
        index,
        params,
        ret,
        ret_ok,
        body,
        bad_params: p.bad_params,
        sig_complete: p.sig_complete,
        n_ids: p.next_id,
    }
}

fn scalar_type(ty: &syn::Type) -> Option<Ty> {
    match ty {
        syn::Type::Path(tp) if tp.qself.is_none() => {
            let id = tp.path.get_ident()?;
            Ty::from_name(&id.to_string())
        }
        syn::Type::Paren(p) => scalar_type(&p.elem),
        syn::Type::Group(g) => scalar_type(&g.elem),
        _ => None,
    }
}

fn param_kind(ty: &syn::Type) -> Option<ParamKind> {
    if let syn::Type::Reference(r) = ty {
        if r.mutability.is_some() {
            return None;
        }
        if let syn::Type::Slice(s) = &*r.elem {
            return match scalar_type(&s.elem)? {
                Ty::U32 => Some(ParamKind::SliceU32),
                Ty::I32 => Some(ParamKind::SliceI32),
                Ty::F32 => Some(ParamKind::SliceF32),
                _ => None,
            };
        }
        return None;
    }
    Some(match scalar_type(ty)? {
        Ty::U32 => ParamKind::U32,
        Ty::I32 => ParamKind::I32,
        Ty::I64 => ParamKind::I64,
        Ty::U64 => ParamKind::U64,
        Ty::F32 => ParamKind::F32,
        Ty::Bool => ParamKind::Bool,
        _ => return None,
    })
}

fn is_named(name: &str, names: &[&str]) -> bool {
    let n = name.strip_prefix('_').unwrap_or(name);
    names.contains(&n)
}

impl Parser<'_> {
    fn err(&mut self, span: Rng, msg: impl std::fmt::Display) {
        self.errors.push(span, msg);
    }

    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id - 1
    }

    fn params(&mut self, sig: &syn::Signature, kind: FnKind) -> (Vec<IndexParam>, Vec<UserParam>) {
        let mut plain = Vec::new();
        for arg in &sig.inputs {
            match arg {
                syn::FnArg::Receiver(r) => self.err(
                    rng(&r),
                    "`self` is not supported: mask/score functions are free functions",
                ),
                syn::FnArg::Typed(pt) => {
                    match &*pt.pat {
                        syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                            if let Some(m) = &pi.mutability {
                                self.err(rng(&m), "mutable parameters are not supported: parameters are read-only");
                            }
                            plain.push((pi.ident.to_string(), rng(&pi.ident), &*pt.ty));
                        }
                        other => self.err(
                            rng(&other),
                            "only plain identifiers are supported as parameter patterns",
                        ),
                    }
                }
            }
        }
        let shape = match kind {
            FnKind::Mask => "fn name([b: u32], [h: u32], q: u32, kv: u32, params...) -> bool",
            FnKind::Score => {
                "fn name(score: f32, [b: u32], [h: u32], q: u32, kv: u32, params...) -> f32"
            }
        };
        let mut index = Vec::new();
        let mut rest = plain.as_slice();
        let index_ty =
            |p: &mut Parser<'_>, (name, _, ty): &(String, Rng, &syn::Type), what: &str| {
                match scalar_type(ty) {
                    Some(t @ (Ty::U32 | Ty::I32 | Ty::I64)) => (t, true),
                    _ => {
                        p.err(
                            rng(&ty),
                            format!("the {what} parameter `{name}` must be `u32`, `i32` or `i64`"),
                        );
                        (Ty::U32, false)
                    }
                }
            };
        if kind == FnKind::Score {
            match rest.split_first() {
                Some((first, tail)) => {
                    let ok = scalar_type(first.2) == Some(Ty::F32);
                    if !ok {
                        self.err(
                            rng(&first.2),
                            format!("the first parameter of a score function is the score and must be `f32`: {shape}"),
                        );
                    }
                    index.push(IndexParam {
                        name: first.0.clone(),
                        ty: Ty::F32,
                        role: Role::Score,
                        ok,
                    });
                    rest = tail;
                }
                None => {
                    self.err(
                        Rng::from(sig.paren_token.span.join()),
                        format!("missing parameters: a score function has the shape {shape}"),
                    );
                    self.sig_complete = false;
                    return (index, Vec::new());
                }
            }
        }
        for (role, names, what) in [
            (Role::Batch, &["b", "batch"][..], "batch index"),
            (Role::Head, &["h", "head"][..], "head index"),
        ] {
            if let Some((first, tail)) = rest.split_first() {
                if is_named(&first.0, names) {
                    let (ty, ok) = index_ty(self, first, what);
                    index.push(IndexParam {
                        name: first.0.clone(),
                        ty,
                        role,
                        ok,
                    });
                    rest = tail;
                }
            }
        }
        if rest.len() < 2 {
            let span = rest
                .first()
                .map(|p| p.1)
                .unwrap_or_else(|| Rng::from(sig.paren_token.span.join()));
            self.err(
                span,
                format!(
                    "missing the query and key position parameters: a {} function has the shape {shape}",
                    kind.as_str()
                ),
            );
            self.sig_complete = false;
            return (index, Vec::new());
        }
        for (role, what) in [(Role::Query, "query position"), (Role::Key, "key position")] {
            let (first, tail) = rest.split_first().expect("checked length");
            let (ty, ok) = index_ty(self, first, what);
            index.push(IndexParam {
                name: first.0.clone(),
                ty,
                role,
                ok,
            });
            rest = tail;
        }
        let mut params = Vec::new();
        for (name, _, ty) in rest {
            match param_kind(ty) {
                Some(kind) => params.push(UserParam {
                    name: name.clone(),
                    kind,
                }),
                None => {
                    self.err(
                        rng(&ty),
                        "unsupported parameter type: allowed are the scalars `u32`, `i32`, `i64`, `u64`, \
                         `f32`, `bool` and the per-token arrays `&[u32]`, `&[i32]`, `&[f32]`",
                    );
                    self.bad_params.push(name.clone());
                }
            }
        }
        (index, params)
    }

    fn block(&mut self, b: &syn::Block) -> Block {
        let mut stmts = Vec::new();
        let mut tail = None;
        let n = b.stmts.len();
        for (i, s) in b.stmts.iter().enumerate() {
            match s {
                syn::Stmt::Local(l) => {
                    if let Some(s) = self.local(l) {
                        stmts.push(s);
                    }
                }
                syn::Stmt::Expr(e, None) if i + 1 == n => tail = Some(Box::new(self.expr(e))),
                syn::Stmt::Expr(e, _) => {
                    let stmt_ok = matches!(
                        strip(e),
                        syn::Expr::If(_) | syn::Expr::Return(_) | syn::Expr::Block(_)
                    );
                    if stmt_ok {
                        stmts.push(Stmt::Expr(self.expr(e)));
                    } else {
                        // Check the expression anyway so that unsupported syntax inside it
                        // is reported with its own message.
                        let before = self.errors.len();
                        let _ = self.expr(e);
                        if before == self.errors.len() {
                            self.err(
                                rng(&e),
                                "this statement has no effect: only `let`, `if` and `return` \
                                 statements are supported; the result is the block's final expression",
                            );
                        }
                    }
                }
                syn::Stmt::Item(it) => self.err(
                    rng(&it),
                    "items (fn, use, const, struct, ...) are not supported inside mask/score functions",
                ),
                syn::Stmt::Macro(m) => self.macro_err(&m.mac),
            }
        }
        Block { stmts, tail }
    }

    fn macro_err(&mut self, mac: &syn::Macro) {
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        self.err(
            rng(&mac),
            format!("macro invocations (`{name}!`) are not supported; {ALLOWED}"),
        );
    }

    fn local(&mut self, l: &syn::Local) -> Option<Stmt> {
        let (pat, ty) = match &l.pat {
            syn::Pat::Type(pt) => (&*pt.pat, Some(&*pt.ty)),
            p => (p, None),
        };
        let ident = match pat {
            syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                if let Some(m) = &pi.mutability {
                    self.err(
                        rng(&m),
                        "mutable bindings are not supported: bindings are immutable; use a new `let`",
                    );
                }
                &pi.ident
            }
            other => {
                self.err(
                    rng(&other),
                    "only `let name = ...;` or `let name: type = ...;` bindings are supported",
                );
                return None;
            }
        };
        let ty = ty.and_then(|t| match scalar_type(t) {
            Some(t) => Some(t),
            None => {
                self.err(
                    rng(&t),
                    "unsupported type: `let` bindings may be `bool`, `i32`, `u32`, `i64`, `u64`, `isize`, `usize` or `f32`",
                );
                None
            }
        });
        let Some(init) = &l.init else {
            self.err(
                rng(&l),
                "a `let` binding needs an initial value: `let x = ...;`",
            );
            return None;
        };
        if let Some((_, d)) = &init.diverge {
            self.err(rng(&d), "`let ... else` is not supported");
        }
        let init = self.expr(&init.expr);
        Some(Stmt::Let {
            id: self.id(),
            name: ident.to_string(),
            span: rng(&ident),
            ty,
            init,
        })
    }

    fn mk(&mut self, span: Rng, kind: ExprKind) -> Expr {
        Expr {
            id: self.id(),
            span,
            kind,
        }
    }

    /// A placeholder for an erroneous expression, so that checking can continue.
    fn bad(&mut self, span: Rng, msg: impl std::fmt::Display) -> Expr {
        self.err(span, msg);
        self.mk(span, ExprKind::Error)
    }

    fn expr(&mut self, e: &syn::Expr) -> Expr {
        let span = rng(&e);
        match e {
            syn::Expr::Paren(p) => self.expr(&p.expr),
            syn::Expr::Group(g) => self.expr(&g.expr),
            syn::Expr::Lit(l) => self.lit(&l.lit),
            syn::Expr::Path(p) => self.path_expr(p),
            syn::Expr::Unary(u) => {
                let op = match u.op {
                    syn::UnOp::Not(_) => UnOp::Not,
                    syn::UnOp::Neg(_) => UnOp::Neg,
                    syn::UnOp::Deref(_) => {
                        return self.bad(
                            span,
                            "dereferencing is not supported: only array parameters are references, and they are indexed",
                        )
                    }
                    _ => return self.bad(span, format!("unsupported operator; {ALLOWED}")),
                };
                let inner = self.expr(&u.expr);
                self.mk(span, ExprKind::Unary(op, Box::new(inner)))
            }
            syn::Expr::Binary(b) => {
                use syn::BinOp as B;
                let op = match b.op {
                    B::Add(_) => BinOp::Add,
                    B::Sub(_) => BinOp::Sub,
                    B::Mul(_) => BinOp::Mul,
                    B::Div(_) => BinOp::Div,
                    B::Rem(_) => BinOp::Rem,
                    B::And(_) => BinOp::And,
                    B::Or(_) => BinOp::Or,
                    B::BitAnd(_) => BinOp::BitAnd,
                    B::BitOr(_) => BinOp::BitOr,
                    B::BitXor(_) => BinOp::BitXor,
                    B::Shl(_) => BinOp::Shl,
                    B::Shr(_) => BinOp::Shr,
                    B::Eq(_) => BinOp::Eq,
                    B::Ne(_) => BinOp::Ne,
                    B::Lt(_) => BinOp::Lt,
                    B::Le(_) => BinOp::Le,
                    B::Gt(_) => BinOp::Gt,
                    B::Ge(_) => BinOp::Ge,
                    _ => {
                        return self.bad(
                            span,
                            "mutation is not supported: bindings are immutable; use a new `let` binding",
                        )
                    }
                };
                let l = self.expr(&b.left);
                let r = self.expr(&b.right);
                self.mk(span, ExprKind::Binary(op, Box::new(l), Box::new(r)))
            }
            syn::Expr::Cast(c) => {
                let inner = self.expr(&c.expr);
                match scalar_type(&c.ty) {
                    Some(t) => self.mk(span, ExprKind::Cast(Box::new(inner), t)),
                    None => self.bad(
                        rng(&c.ty),
                        "unsupported cast target: `as` may convert to the scalar types `i32`, `u32`, `i64`, `u64`, `isize`, `usize`, `f32`",
                    ),
                }
            }
            syn::Expr::If(i) => self.if_expr(i),
            syn::Expr::Block(b) => {
                if let Some(l) = &b.label {
                    self.err(rng(&l), "labels are not supported");
                }
                let blk = self.block(&b.block);
                self.mk(span, ExprKind::Block(blk))
            }
            syn::Expr::Index(ix) => {
                let idx = self.expr(&ix.index);
                match strip(&ix.expr) {
                    syn::Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                        let id = p.path.get_ident().expect("checked");
                        self.mk(
                            span,
                            ExprKind::Index(id.to_string(), rng(&id), Box::new(idx)),
                        )
                    }
                    other => self.bad(
                        rng(&other),
                        "only array parameters can be indexed, by name: `doc[q as usize]`",
                    ),
                }
            }
            syn::Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if m.turbofish.is_some() {
                    return self.bad(span, "turbofish (`::<>`) is not supported");
                }
                let Some(func) = func_by_name(&name) else {
                    return self.bad(
                        rng(&m.method),
                        format!("method `{name}` is not supported; allowed methods: {METHODS}"),
                    );
                };
                let mut args = vec![self.expr(&m.receiver)];
                for a in &m.args {
                    args.push(self.expr(a));
                }
                self.call(span, func, args, None, &name)
            }
            syn::Expr::Call(c) => self.call_expr(c),
            syn::Expr::Return(r) => match &r.expr {
                Some(v) => {
                    let v = self.expr(v);
                    self.mk(span, ExprKind::Return(Box::new(v)))
                }
                None => self.bad(span, "`return` needs a value"),
            },
            syn::Expr::ForLoop(_) | syn::Expr::While(_) | syn::Expr::Loop(_) => self.bad(
                span,
                "loops are not supported: mask/score functions are straight-line code \
                 (use arithmetic, `if`/`else`, `min`/`max`)",
            ),
            syn::Expr::Closure(_) => self.bad(span, format!("closures are not supported; {ALLOWED}")),
            syn::Expr::Macro(m) => {
                self.macro_err(&m.mac);
                self.mk(span, ExprKind::Error)
            }
            syn::Expr::Assign(_) => self.bad(
                span,
                "mutation is not supported: bindings are immutable; use a new `let` binding",
            ),
            syn::Expr::Field(_) => self.bad(
                span,
                "field access is not supported: pass scalars or per-token arrays as parameters",
            ),
            syn::Expr::Reference(_) => self.bad(
                span,
                "references are not supported (only array parameters are references, and they are indexed)",
            ),
            syn::Expr::Match(_) => self.bad(span, "`match` is not supported: use `if`/`else`"),
            _ => self.bad(span, format!("this expression is not supported; {ALLOWED}")),
        }
    }

    fn call(&mut self, span: Rng, func: Func, args: Vec<Expr>, ty: Option<Ty>, name: &str) -> Expr {
        let want = match func {
            Func::Min | Func::Max | Func::Powf => 2,
            Func::Abs | Func::Math(_) => 1,
        };
        if args.len() != want {
            return self.bad(
                span,
                format!("`{name}` takes {want} argument(s) here, got {}", args.len()),
            );
        }
        self.mk(span, ExprKind::Call(func, args, ty))
    }

    fn call_expr(&mut self, c: &syn::ExprCall) -> Expr {
        let span = rng(&c);
        let syn::Expr::Path(p) = strip(&c.func) else {
            return self.bad(
                rng(&c.func),
                "only calls of `min`, `max` and f32 math functions are supported",
            );
        };
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let has_generics = p
            .path
            .segments
            .iter()
            .any(|s| !matches!(s.arguments, syn::PathArguments::None));
        let last = segs.last().cloned().unwrap_or_default();
        let prefix: Vec<&str> = segs[..segs.len().saturating_sub(1)]
            .iter()
            .map(|s| s.as_str())
            .collect();
        let (func, ty) = match (prefix.as_slice(), func_by_name(&last)) {
            _ if has_generics || p.qself.is_some() => (None, None),
            ([], Some(f @ (Func::Min | Func::Max))) => (Some(f), None),
            (["std" | "core", "cmp"] | ["cmp"], Some(f @ (Func::Min | Func::Max))) => {
                (Some(f), None)
            }
            ([t], Some(f)) => match Ty::from_name(t) {
                Some(t) if t != Ty::Bool => (Some(f), Some(t)),
                _ => (None, None),
            },
            _ => (None, None),
        };
        let Some(func) = func else {
            let shown = segs.join("::");
            return self.bad(
                rng(&c.func),
                format!(
                    "function `{shown}` is not supported; allowed calls: `min(a, b)`, `max(a, b)`, \
                     `<type>::min/max/abs(..)` and `f32::<f>(..)` for {METHODS}"
                ),
            );
        };
        let args = c.args.iter().map(|a| self.expr(a)).collect();
        self.call(span, func, args, ty, &last)
    }

    fn if_expr(&mut self, i: &syn::ExprIf) -> Expr {
        let span = rng(&i);
        if let syn::Expr::Let(l) = &*i.cond {
            return self.bad(
                rng(&l),
                "`if let` is not supported: use a boolean condition",
            );
        }
        let cond = self.expr(&i.cond);
        let then = self.block(&i.then_branch);
        let els = i.else_branch.as_ref().map(|(_, e)| Box::new(self.expr(e)));
        self.mk(span, ExprKind::If(Box::new(cond), then, els))
    }

    fn lit(&mut self, l: &syn::Lit) -> Expr {
        let span = rng(&l);
        match l {
            syn::Lit::Bool(b) => self.mk(span, ExprKind::Lit(Lit::Bool(b.value))),
            syn::Lit::Int(i) => {
                let suffix = i.suffix();
                let ty = if suffix.is_empty() {
                    None
                } else {
                    match Ty::from_name(suffix) {
                        Some(t) if t.is_int() => Some(t),
                        Some(Ty::F32) => {
                            return match i.base10_parse::<u128>() {
                                Ok(v) => self.mk(span, ExprKind::Lit(Lit::Float(v as f32))),
                                Err(e) => self.bad(span, e),
                            }
                        }
                        _ => {
                            return self.bad(
                                span,
                                format!("unsupported literal suffix `{suffix}`: use i32, u32, i64, u64, isize, usize or f32"),
                            )
                        }
                    }
                };
                match i.base10_parse::<u128>() {
                    Ok(v) => self.mk(span, ExprKind::Lit(Lit::Int(v, ty))),
                    Err(e) => self.bad(span, e),
                }
            }
            syn::Lit::Float(f) => {
                let suffix = f.suffix();
                if !suffix.is_empty() && suffix != "f32" {
                    return self.bad(
                        span,
                        format!("unsupported float literal suffix `{suffix}`: only `f32` is supported (no f64 on this path)"),
                    );
                }
                match f.base10_parse::<f32>() {
                    Ok(v) => self.mk(span, ExprKind::Lit(Lit::Float(v))),
                    Err(e) => self.bad(span, e),
                }
            }
            _ => self.bad(
                span,
                "unsupported literal: use integer, float or bool literals",
            ),
        }
    }

    fn path_expr(&mut self, p: &syn::ExprPath) -> Expr {
        let span = rng(&p);
        if p.qself.is_some() {
            return self.bad(span, "qualified paths are not supported");
        }
        if let Some(id) = p.path.get_ident() {
            return self.mk(span, ExprKind::Var(id.to_string()));
        }
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let c = match segs
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .as_slice()
        {
            [t, "MAX"] => Ty::from_name(t).filter(|t| *t != Ty::Bool).map(Const::Max),
            [t, "MIN"] => Ty::from_name(t).filter(|t| *t != Ty::Bool).map(Const::Min),
            ["f32", "INFINITY"] => Some(Const::Infinity),
            ["f32", "NEG_INFINITY"] => Some(Const::NegInfinity),
            ["f32", "EPSILON"] => Some(Const::Epsilon),
            _ => None,
        };
        match c {
            Some(c) => self.mk(span, ExprKind::Const(c)),
            None => self.bad(
                span,
                format!(
                    "path `{}` is not supported: only parameters, `let` bindings and the constants \
                     `<int>::MAX/MIN`, `f32::MAX/MIN/INFINITY/NEG_INFINITY/EPSILON` are visible",
                    segs.join("::")
                ),
            ),
        }
    }
}

fn func_by_name(name: &str) -> Option<Func> {
    Some(match name {
        "min" => Func::Min,
        "max" => Func::Max,
        "abs" => Func::Abs,
        "powf" => Func::Powf,
        _ => Func::Math(MATH.iter().find(|(r, _)| *r == name)?.1),
    })
}

fn strip(e: &syn::Expr) -> &syn::Expr {
    match e {
        syn::Expr::Paren(p) => strip(&p.expr),
        syn::Expr::Group(g) => strip(&g.expr),
        e => e,
    }
}
