//! Rust printing of a checked function of the subset, for the host side of generated
//! derivative functions (`#[score(backward)]` compiles them natively next to the user's
//! function). Every compound expression is parenthesised and every literal carries its type
//! suffix, so the text means what the typed AST means.

use crate::check::Typed;
use crate::parse::{Block, Const, Expr, ExprKind, FnAst, Func, Lit, Stmt, Ty, UnOp};
use std::fmt::Write;

/// The function as a Rust item, `fn name(<the user's parameters>) -> ret { .. }`.
pub(crate) fn print_fn(ast: &FnAst, typed: &Typed) -> String {
    let params: Vec<String> = ast
        .index
        .iter()
        .map(|p| format!("{}: {}", p.name, p.ty.name()))
        .chain(
            ast.params
                .iter()
                .map(|p| format!("{}: {}", p.name, p.kind.rust_type())),
        )
        .collect();
    let mut s = format!(
        "fn {}({}) -> {} ",
        ast.name,
        params.join(", "),
        ast.ret.name()
    );
    block(&mut s, &ast.body, typed);
    s
}

fn block(s: &mut String, b: &Block, typed: &Typed) {
    s.push_str("{ ");
    for st in &b.stmts {
        match st {
            Stmt::Let { id, name, init, .. } => {
                let t = typed.ty(*id);
                if matches!(t, Ty::Unit | Ty::Never) {
                    let _ = write!(s, "let {name} = ");
                } else {
                    let _ = write!(s, "let {name}: {} = ", t.name());
                }
                expr(s, init, typed);
                s.push_str("; ");
            }
            Stmt::Expr(e) => {
                expr(s, e, typed);
                s.push_str("; ");
            }
        }
    }
    if let Some(t) = &b.tail {
        expr(s, t, typed);
    }
    s.push_str(" }");
}

fn expr(s: &mut String, e: &Expr, typed: &Typed) {
    let t = typed.ty(e.id);
    match &e.kind {
        ExprKind::Lit(Lit::Bool(b)) => s.push_str(if *b { "true" } else { "false" }),
        ExprKind::Lit(Lit::Int(v, _)) if t == Ty::F32 => float(s, *v as f32),
        ExprKind::Lit(Lit::Int(v, _)) => {
            let _ = write!(s, "{v}{}", t.name());
        }
        ExprKind::Lit(Lit::Float(v)) => float(s, *v),
        ExprKind::Const(c) => {
            let _ = match c {
                Const::Max(t) => write!(s, "{}::MAX", t.name()),
                Const::Min(t) => write!(s, "{}::MIN", t.name()),
                Const::Infinity => write!(s, "f32::INFINITY"),
                Const::NegInfinity => write!(s, "f32::NEG_INFINITY"),
                Const::Epsilon => write!(s, "f32::EPSILON"),
            };
        }
        ExprKind::Var(n) => s.push_str(n),
        ExprKind::Unary(op, a) => {
            s.push_str(if *op == UnOp::Neg { "(-" } else { "(!" });
            expr(s, a, typed);
            s.push(')');
        }
        ExprKind::Binary(op, a, b) => {
            s.push('(');
            expr(s, a, typed);
            let _ = write!(s, " {} ", op.symbol());
            expr(s, b, typed);
            s.push(')');
        }
        ExprKind::Cast(a, to) => {
            s.push('(');
            expr(s, a, typed);
            let _ = write!(s, " as {})", to.name());
        }
        ExprKind::If(c, then, els) => {
            s.push_str("(if ");
            expr(s, c, typed);
            s.push(' ');
            block(s, then, typed);
            if let Some(e) = els {
                s.push_str(" else { ");
                expr(s, e, typed);
                s.push_str(" }");
            }
            s.push(')');
        }
        ExprKind::Block(b) => block(s, b, typed),
        ExprKind::Index(name, _, i) => {
            let _ = write!(s, "{name}[");
            expr(s, i, typed);
            s.push(']');
        }
        ExprKind::Call(f, args, _) => {
            // Fully qualified (`f32::tanh(x)`): the argument type fixes the method.
            let at = args.first().map_or(t, |a| typed.ty(a.id));
            let name = match f {
                Func::Min => "min",
                Func::Max => "max",
                Func::Abs => "abs",
                Func::Powf => "powf",
                Func::Math(c) => crate::parse::rust_math_name(c),
            };
            let _ = write!(s, "{}::{name}(", at.name());
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                expr(s, a, typed);
            }
            s.push(')');
        }
        ExprKind::Return(v) => {
            s.push_str("(return ");
            expr(s, v, typed);
            s.push(')');
        }
        ExprKind::Error => s.push_str("unreachable!()"),
    }
}

fn float(s: &mut String, v: f32) {
    if v.is_infinite() {
        s.push_str(if v > 0.0 {
            "f32::INFINITY"
        } else {
            "f32::NEG_INFINITY"
        });
    } else {
        let _ = write!(s, "{v:?}f32");
    }
}
