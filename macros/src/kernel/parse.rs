//! Syntax: `attrs vis Name { key: value, ... }`, repeated; `tune: { key: [..], ... }`;
//! `family: name(key: value, ...)` with named arguments whose values may be calls
//! themselves (`mode: retrieval(top_k: 4)`).

use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Expr, Ident, Token, Visibility};

/// Every declaration of one `kernel!` invocation.
pub(crate) struct Input {
    pub decls: Vec<KernelDecl>,
}

/// One declared kernel.
pub(crate) struct KernelDecl {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub entries: Vec<Entry>,
}

/// `key: value`.
pub(crate) struct Entry {
    pub key: Ident,
    pub value: Value,
}

/// A value: an expression, a braced list of entries (`tune: { .. }`) or, for `family:`, a
/// call with named arguments.
pub(crate) enum Value {
    Expr(Box<Expr>),
    Group(Vec<Entry>),
    Call(Call),
}

/// `name` or `name(arg, ...)` (the value of `family:` and of its nested parameters).
pub(crate) struct Call {
    pub name: Ident,
    /// The parentheses' span and the arguments, when written.
    pub args: Option<(proc_macro2::Span, Vec<Arg>)>,
}

/// One argument of a [`Call`]: `key: value` or (rejected by `check`) a positional value.
pub(crate) struct Arg {
    pub key: Option<Ident>,
    pub value: ArgValue,
}

/// An argument's value: a nested call (`retrieval(top_k: 4)`, `train`) or an expression
/// (`63`, `true`, `-1`).
pub(crate) enum ArgValue {
    Call(Call),
    Expr(Box<Expr>),
}

impl ArgValue {
    /// The tokens the value covers (for error spans).
    pub fn tokens(&self) -> proc_macro2::TokenStream {
        use quote::ToTokens;
        match self {
            ArgValue::Call(c) => c.tokens(),
            ArgValue::Expr(e) => e.to_token_stream(),
        }
    }
}

impl Call {
    /// The name only (`landmark`), for error spans about the call as a whole.
    pub fn tokens(&self) -> proc_macro2::TokenStream {
        use quote::ToTokens;
        self.name.to_token_stream()
    }
}

/// Whether the next value parses as an expression that ends the entry.
fn is_expr(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    fork.parse::<Expr>().is_ok() && (fork.is_empty() || fork.peek(Token![,]))
}

fn parse_call(input: ParseStream<'_>) -> syn::Result<Call> {
    let name: Ident = input.call(syn::ext::IdentExt::parse_any)?;
    let args = if input.peek(syn::token::Paren) {
        let content;
        let paren = syn::parenthesized!(content in input);
        let mut args = Vec::new();
        while !content.is_empty() {
            let key = if (content.peek(Ident) || content.peek(Token![type]))
                && content.peek2(Token![:])
                && !content.peek2(Token![::])
            {
                let k: Ident = content.call(syn::ext::IdentExt::parse_any)?;
                content.parse::<Token![:]>()?;
                Some(k)
            } else {
                None
            };
            let value = if content.peek(Ident) && !content.peek2(Token![::]) {
                ArgValue::Call(parse_call(&content)?)
            } else {
                ArgValue::Expr(Box::new(content.parse()?))
            };
            args.push(Arg { key, value });
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        Some((paren.span.join(), args))
    } else {
        None
    };
    Ok(Call { name, args })
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut decls = Vec::new();
        while !input.is_empty() {
            decls.push(input.parse()?);
        }
        if decls.is_empty() {
            return Err(input.error(
                "expected a kernel declaration: `pub Name { mask: causal, dtype: bf16, head_dim: 128 }`",
            ));
        }
        Ok(Input { decls })
    }
}

impl Parse for KernelDecl {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let name: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected the kernel's type name, e.g. `pub DocSoftcap { .. }`",
            )
        })?;
        let content;
        braced!(content in input);
        Ok(KernelDecl {
            attrs,
            vis,
            name,
            entries: parse_entries(&content)?,
        })
    }
}

fn parse_entries(input: ParseStream<'_>) -> syn::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    while !input.is_empty() {
        let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        input.parse::<Token![:]>()?;
        let value = if key == "family" && input.peek(Ident) {
            Value::Call(parse_call(input)?)
        } else if input.peek(Ident) && input.peek2(syn::token::Paren) && !is_expr(input) {
            // `mask: landmark(mem_freq: 63, ..)`: named arguments are no expression; parsed
            // as a call so that `check` can say to use `family:`.
            Value::Call(parse_call(input)?)
        } else if input.peek(syn::token::Brace) {
            let content;
            braced!(content in input);
            Value::Group(parse_entries(&content)?)
        } else {
            Value::Expr(Box::new(input.parse()?))
        };
        entries.push(Entry { key, value });
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(entries)
}
