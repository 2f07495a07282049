//! Syntax: `attrs vis Name { key: value, ... }`, repeated; `tune: { key: [..], ... }`.

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

/// A value: an expression, or a braced list of entries (`tune: { .. }`).
pub(crate) enum Value {
    Expr(Box<Expr>),
    Group(Vec<Entry>),
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
        let value = if input.peek(syn::token::Brace) {
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
