//! `cargo xtask fn-lengths`: the functions of the generator, the runtime's exec and the spec
//! files that are longer than the project's limit (issue 14: no function over 120 lines in
//! codegen, exec or specfile), so a long function is found by a command, not by review.
//!
//! The scan is lexical (std only, like the rest of xtask): it skips comments, string, raw
//! string and char literals (the generator holds CUDA text with braces in strings), finds each
//! `fn` item and matches its body's braces. A function's length is the count of lines from
//! its `fn` line to the line of its closing brace, inclusive; nested functions and closures
//! count towards the function that holds them.

use std::fs;
use std::path::{Path, PathBuf};

/// The limit of issue 14.
pub const MAX_FN_LINES: usize = 120;

/// The sources the limit applies to, relative to the workspace root: folders are walked
/// for `.rs` files (tests folders are not part of them).
pub const SCOPE: &[&str] = &[
    "codegen/src",
    "runtime/src/exec.rs",
    "runtime/src/exec_dynamic.rs",
    "runtime/src/exec_backward.rs",
    "runtime/src/pipeline.rs",
    "src/specfile",
];

/// One function found by the scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FnSpan {
    /// Its name.
    pub name: String,
    /// 1-based line of the `fn` keyword.
    pub line: usize,
    /// Lines from the `fn` line to the closing brace, inclusive.
    pub lines: usize,
}

/// Replace comments and the contents of string and char literals by spaces (newlines kept),
/// so braces and `fn` inside them are not seen.
fn blank_literals(src: &str) -> Vec<u8> {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                let start = i;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                blank(&mut out, start, i);
            }
            b'r' if is_raw_string_start(b, i) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while b[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                let body = j + 1;
                let mut k = body;
                let end = loop {
                    if k >= b.len() {
                        break b.len();
                    }
                    if b[k] == b'"'
                        && b[k + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&c| c == b'#')
                            .count()
                            == hashes
                    {
                        break k;
                    }
                    k += 1;
                };
                blank(&mut out, body, end);
                i = (end + 1 + hashes).min(b.len());
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, start, i.min(b.len()));
                i += 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): a lifetime has no
                // closing quote right after its first character.
                if b.get(i + 1) == Some(&b'\\') {
                    let end = b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map_or(b.len(), |p| i + 2 + p);
                    blank(&mut out, i + 1, end);
                    i = end + 1;
                } else if let Some(len) = char_len_at(src, i + 1) {
                    if b.get(i + 1 + len) == Some(&b'\'') {
                        blank(&mut out, i + 1, i + 1 + len);
                        i += len + 2;
                    } else {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

fn char_len_at(src: &str, at: usize) -> Option<usize> {
    src.get(at..)?.chars().next().map(char::len_utf8)
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_raw_string_start(b: &[u8], i: usize) -> bool {
    if i > 0 && is_ident_byte(b[i - 1]) {
        return false;
    }
    let mut j = i + 1;
    while j < b.len() && b[j] == b'#' {
        j += 1;
    }
    j < b.len() && b[j] == b'"'
}

/// Every function item of a Rust source with its length.
pub fn function_spans(src: &str) -> Vec<FnSpan> {
    let b = blank_literals(src);
    let line_of = |pos: usize| 1 + b[..pos].iter().filter(|&&c| c == b'\n').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i + 2 < b.len() {
        let is_fn = &b[i..i + 2] == b"fn"
            && (i == 0 || !is_ident_byte(b[i - 1]))
            && b[i + 2].is_ascii_whitespace();
        if !is_fn {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < b.len() && is_ident_byte(b[j]) {
            j += 1;
        }
        let name = String::from_utf8_lossy(&b[name_start..j]).into_owned();
        // The body starts at the first `{` before any `;` (a `;` first: a declaration
        // without body, as in traits); braces of `where` clauses do not occur.
        let mut k = j;
        while k < b.len() && b[k] != b'{' && b[k] != b';' {
            k += 1;
        }
        if name.is_empty() || k >= b.len() || b[k] == b';' {
            i = j.max(i + 1);
            continue;
        }
        let mut depth = 0usize;
        let mut end = k;
        while end < b.len() {
            match b[end] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        let (first, last) = (line_of(i), line_of(end.min(b.len() - 1)));
        spans.push(FnSpan {
            name,
            line: first,
            lines: last - first + 1,
        });
        // Nested functions are scanned too (they are reported on their own as well).
        i = j;
    }
    spans
}

fn rust_files(root: &Path, rel: &str, out: &mut Vec<PathBuf>) {
    let p = root.join(rel);
    if p.is_file() {
        out.push(p);
        return;
    }
    let Ok(rd) = fs::read_dir(&p) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if e.is_dir() && name != "tests" {
            let sub = e
                .strip_prefix(root)
                .unwrap_or(&e)
                .to_string_lossy()
                .into_owned();
            rust_files(root, &sub, out);
        } else if name.ends_with(".rs") {
            out.push(e);
        }
    }
}

/// The functions over `max` lines in [`SCOPE`], as `path:line fn name (N lines)`, longest first.
pub fn offenders(root: &Path, max: usize) -> Result<Vec<(String, FnSpan)>, String> {
    let mut files = Vec::new();
    for rel in SCOPE {
        rust_files(root, rel, &mut files);
    }
    if files.is_empty() {
        return Err(format!(
            "no Rust sources under {} for {SCOPE:?}",
            root.display()
        ));
    }
    let mut out = Vec::new();
    for f in files {
        let src =
            fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        for s in function_spans(&src) {
            if s.lines > max {
                out.push((rel.clone(), s));
            }
        }
    }
    out.sort_by_key(|o| std::cmp::Reverse(o.1.lines));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_in_strings_comments_and_chars_do_not_count() {
        let src = "fn a() {\n    let s = \"{{{\";\n    // }\n    let c = '}';\n    let r = r#\"}\"#;\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\n";
        let spans = function_spans(src);
        assert_eq!(
            spans,
            vec![
                FnSpan {
                    name: "a".into(),
                    line: 1,
                    lines: 6
                },
                FnSpan {
                    name: "b".into(),
                    line: 7,
                    lines: 3
                },
            ]
        );
    }

    #[test]
    fn declarations_without_body_and_nested_functions() {
        let src = "trait T {\n    fn decl(&self);\n}\nfn outer() {\n    fn inner() {\n    }\n}\n";
        let spans = function_spans(src);
        let names: Vec<(&str, usize)> = spans.iter().map(|s| (s.name.as_str(), s.lines)).collect();
        assert_eq!(names, vec![("outer", 4), ("inner", 2)]);
    }

    #[test]
    fn a_long_function_is_an_offender() {
        let dir = std::env::temp_dir().join(format!("xtask-fnlen-{}", std::process::id()));
        let code = dir.join("codegen/src");
        fs::create_dir_all(&code).unwrap();
        let body: String = (0..130)
            .map(|i| format!("    let _x{i} = {i};\n"))
            .collect();
        fs::write(
            code.join("long.rs"),
            format!("fn long() {{\n{body}}}\nfn short() {{}}\n"),
        )
        .unwrap();
        let off = offenders(&dir, MAX_FN_LINES).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].1.name, "long");
        assert_eq!(off[0].1.lines, 132);
    }

    /// The enforcement of the limit: the real sources of [`SCOPE`] have no offender (a new
    /// long function fails `cargo test -p xtask`, not only `cargo xtask fn-lengths`).
    #[test]
    fn the_workspace_has_no_function_over_the_limit() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest);
        let off = offenders(root, MAX_FN_LINES).unwrap();
        let list: Vec<String> = off
            .iter()
            .map(|(p, f)| format!("{p}:{} fn {} ({} lines)", f.line, f.name, f.lines))
            .collect();
        assert!(
            list.is_empty(),
            "functions over {MAX_FN_LINES} lines (split them by concern): {list:#?}"
        );
    }

    #[test]
    fn the_scope_exists() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest);
        for rel in SCOPE {
            assert!(
                root.join(rel).exists(),
                "{rel} named in SCOPE does not exist"
            );
        }
    }
}
