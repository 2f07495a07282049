//! `kernel!`: parse -> check -> expand, one module each.
//!
//! `parse` turns the tokens into declarations of `key: value` entries (values kept as
//! `syn::Expr` with their spans), `check` interprets them into a [`check::Decl`] and runs the
//! codegen validation (`validate_spec`, `validate_problem`, `TileConfig::valid`) with errors
//! mapped back to spans, `expand` quotes the typed kernel item. All errors are collected.
//! A declaration with a `family:` key names a dynamic family instead: `family` checks it
//! into a `DynamicSpec` (`validate_dynamic`) and `expand::expand_dynamic` quotes its item.

mod check;
mod expand;
mod family;
mod parse;

use proc_macro2::TokenStream;

pub(crate) fn kernel(input: TokenStream) -> TokenStream {
    let decls = match syn::parse2::<parse::Input>(input) {
        Ok(i) => i.decls,
        Err(e) => return e.to_compile_error(),
    };
    let mut out = TokenStream::new();
    for d in decls {
        let mut errors = Vec::new();
        if family::is_dynamic(&d) {
            let checked = family::check(&d, &mut errors);
            out.extend(expand::expand_dynamic(&d, checked.as_ref(), &errors));
        } else {
            let checked = check::check(&d, &mut errors);
            out.extend(expand::expand(&d, checked.as_ref(), &errors));
        }
    }
    out
}
