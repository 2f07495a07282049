//! The mask table is the one place a built-in mask lives: walking the repository, every
//! built-in mask is mentioned by at most 4 places outside tests (the table, the CUDA
//! predicate file, the reference, the catalog), and the table's entries are consistent.
//!
//! What counts as a mention (in `*.rs` and `*.cuh` files, outside `//` and `/* */`
//! comments, string contents included):
//! - a tag with `_` (`prefix_lm`): an identifier or string token equal to it
//!   (case-insensitive, so `PREFIX_LM` too) or its CamelCase form (`PrefixLm`);
//! - a one-word tag (`full`, `causal`, `local`, `document`: ordinary words and identifiers
//!   such as `TileKind::Full` or a `local` variable): the path `Mask::<CamelCase>` naming the
//!   built-in mask.
//!
//! Not counted: directories named `tests` and `#[cfg(test)]` modules (tests), directories
//! named `examples` (documentation),
//! `target/`, hidden directories, and the IR's scoring policies (`pub enum Scoring { .. }`
//! and `Scoring::LmInfinite`: the LM-Infinite scoring policy, a kernel concept that the
//! table's `lm_infinite_scoring` flag selects). The files of
//! the reference crate (`reference/src/`, the oracle, which keeps its own definitions by
//! design) count as one place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use attnforge_codegen::masks::{BuiltinMask, MaskParams, ParamType, ScheduleKind, MASKS};
use attnforge_codegen::spec::Mask;

const MAX_PLACES: usize = 4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen/ sits in the repository")
        .to_path_buf()
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            let skip =
                name.starts_with('.') || name == "target" || name == "tests" || name == "examples";
            if !skip {
                source_files(&path, root, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".cuh") {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((rel, text));
            }
        }
    }
}

/// The text without `//` and `/* */` comments (string literals kept, so a `//` inside a
/// string does not start a comment).
fn strip_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str(&s[start..i.min(b.len())]);
        } else {
            let ch = s[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn camel(tag: &str) -> String {
    tag.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `code` (comments stripped) without its `#[cfg(test)] mod name { .. }` modules (unit
/// tests); braces inside string and char literals do not count.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = out[at + "#[cfg(test)]".len()..].trim_start();
        if !rest.starts_with("mod ") {
            // an attribute on something else: keep it, look further
            out.replace_range(at..at + "#[cfg(test)]".len(), "#[cfg(tst)]");
            continue;
        }
        let Some(open) = out[at..].find('{').map(|i| at + i) else {
            break;
        };
        let b = out.as_bytes();
        let (mut depth, mut i) = (0usize, open);
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'\'' if i + 2 < b.len() && b[i + 2] == b'\'' => i += 2,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        out.replace_range(at..(i + 1).min(out.len()), "");
    }
    out
}

/// `code` without the IR's scoring policies (`enum Scoring { .. }` and `Scoring::` paths).
fn without_scoring_policy(code: &str) -> String {
    let mut code = code.replace("Scoring::LmInfinite", "");
    if let Some(i) = code.find("pub enum Scoring {") {
        let end = code[i..].find('}').map_or(code.len(), |j| i + j + 1);
        code.replace_range(i..end, "");
    }
    code
}

/// Whether `code` (comments stripped) mentions the mask `tag` by the rules of the module
/// docs.
fn mentions(code: &str, tag: &str) -> bool {
    let camel = camel(tag);
    if tag.contains('_') {
        let code = without_scoring_policy(code);
        code.split(|c: char| !is_ident(c))
            .any(|t| t.eq_ignore_ascii_case(tag) || t == camel)
    } else {
        let path = format!("Mask::{camel}");
        code.match_indices(&path).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = code[i + path.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
    }
}

/// The places (files; the reference crate's files as one) outside tests that mention
/// each built-in mask.
fn places_per_mask() -> Vec<(&'static str, BTreeSet<String>)> {
    let root = repo_root();
    let mut files = Vec::new();
    source_files(&root, &root, &mut files);
    assert!(
        files.len() > 50,
        "walked only {} source files under {}",
        files.len(),
        root.display()
    );
    let code: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, t)| (p, without_test_modules(&strip_comments(&t))))
        .collect();
    MASKS
        .iter()
        .map(|d| {
            let places = code
                .iter()
                .filter(|(_, c)| mentions(c, d.tag))
                .map(|(p, _)| {
                    if p.starts_with("reference/src/") {
                        "reference/src/* (the reference)".to_string()
                    } else {
                        p.clone()
                    }
                })
                .collect();
            (d.tag, places)
        })
        .collect()
}

#[test]
fn every_builtin_mask_lives_in_at_most_four_places() {
    let per_mask = places_per_mask();
    let mut report = String::new();
    let mut too_many = Vec::new();
    for (tag, places) in &per_mask {
        report.push_str(&format!(
            "{tag}: {} place(s): {}\n",
            places.len(),
            places.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        if places.len() > MAX_PLACES {
            too_many.push(*tag);
        }
        // The matcher must see the catalog's entry of every mask (a matcher that finds
        // nothing would pass vacuously).
        assert!(
            places.contains("codegen/src/catalog.rs"),
            "mask `{tag}` is not found in the catalog (no catalog entry, or the matcher is broken):\n{report}"
        );
    }
    println!("{report}");
    assert!(
        too_many.is_empty(),
        "masks mentioned outside the table, the CUDA predicate file, the reference and the \
         catalog ({too_many:?}); derive the offending files from codegen/src/masks.rs:\n{report}"
    );
}

#[test]
fn the_matcher_counts_code_not_comments() {
    assert!(mentions(
        &strip_comments("let m = Mask::PrefixLm;"),
        "prefix_lm"
    ));
    assert!(mentions(&strip_comments("x(\"prefix_lm\")"), "prefix_lm"));
    assert!(mentions(
        &strip_comments("const PREFIX_LM: u8 = 0;"),
        "prefix_lm"
    ));
    assert!(!mentions(
        &strip_comments("// prefix_lm\n/* PrefixLm */"),
        "prefix_lm"
    ));
    assert!(!mentions(
        &strip_comments("fn prefix_lm_len() {}"),
        "prefix_lm"
    ));
    assert!(mentions(&strip_comments("s(Mask::Causal)"), "causal"));
    assert!(!mentions(
        &strip_comments("TileKind::Full; let local = 1;"),
        "full"
    ));
    assert!(!mentions(&strip_comments("RefMask::Full"), "full"));
    assert!(!mentions(
        &strip_comments("Scoring::LmInfinite"),
        "lm_infinite"
    ));
    assert!(!mentions(
        "pub enum Scoring {\n Dot,\n LmInfinite,\n}",
        "lm_infinite"
    ));
    assert!(mentions(
        "pub enum Scoring { Dot }\nMask::LmInfinite",
        "lm_infinite"
    ));
}

#[test]
fn table_entries_are_consistent() {
    let mut tags = BTreeSet::new();
    for d in MASKS {
        assert!(tags.insert(d.tag), "tag `{}` twice", d.tag);
        assert!(
            d.tag.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{}",
            d.tag
        );
        let m = BuiltinMask::from_tag(d.tag).unwrap();
        assert_eq!(Mask::builtin(d.tag), Some(Mask::Builtin(m)));
        // Serde spelling is the tag.
        assert_eq!(
            serde_json::to_string(&Mask::Builtin(m)).unwrap(),
            format!("\"{}\"", d.tag)
        );
        let mut names = BTreeSet::new();
        for p in d.params {
            assert!(
                names.insert(p.name),
                "{}: parameter {} twice",
                d.tag,
                p.name
            );
            // The default and the stress value are valid values at typical key lengths.
            for sk in [1usize, 80, 4096] {
                p.check(p.default.at(sk))
                    .unwrap_or_else(|e| panic!("{}.{} default at Sk={sk}: {e:?}", d.tag, p.name));
                p.check(p.stress.at(sk.max(20)))
                    .unwrap_or_else(|e| panic!("{}.{} stress at Sk={sk}: {e:?}", d.tag, p.name));
            }
            if p.ty == ParamType::Int {
                assert_eq!(p.default.at(80).fract(), 0.0, "{}.{}", d.tag, p.name);
            }
        }
        // Analytic masks classify tiles in closed form (host and CUDA); list-driven ones do not.
        assert_eq!(
            d.schedule == ScheduleKind::Analytic,
            d.host_classify.is_some(),
            "{}",
            d.tag
        );
        if d.schedule == ScheduleKind::Analytic && d.element_fn.is_some() {
            assert!(
                d.tile_fn.is_some(),
                "{}: analytic mask without a CUDA classifier",
                d.tag
            );
        }
        // Defaults round-trip through the ordered values.
        let p = MaskParams::defaults(m, 80);
        assert_eq!(MaskParams::from_ordered(m, &p.ordered(m, 80)), p);
    }
}

#[test]
fn cuda_functions_of_the_table_exist_in_af_attn() {
    let cuh = std::fs::read_to_string(repo_root().join("codegen/cuda/af_attn.cuh")).unwrap();
    for d in MASKS {
        for f in d.element_fn.iter().chain(d.tile_fn.iter()) {
            assert!(
                cuh.contains(&format!(" {f}(")),
                "{}: `{f}` is not defined in codegen/cuda/af_attn.cuh",
                d.tag
            );
        }
    }
}

#[test]
fn every_kernel_argument_has_one_role_consistent_with_the_tables() {
    use attnforge_codegen::args::{kernel_args, typed_kernel_args, ArgRole};
    for spec in attnforge_codegen::catalog() {
        let typed = typed_kernel_args(&spec);
        assert_eq!(
            typed.iter().map(|t| t.arg.clone()).collect::<Vec<_>>(),
            kernel_args(&spec)
        );
        let mut roles = BTreeSet::new();
        for t in &typed {
            assert!(
                roles.insert(format!("{:?}", t.role)),
                "{}: role {:?} twice",
                spec.canonical_name(),
                t.role
            );
            if let ArgRole::MaskParam { mask, index } = t.role {
                assert_eq!(Mask::Builtin(mask), spec.mask);
                assert_eq!(mask.def().params[index].name, t.arg.name);
            }
            if t.role == ArgRole::ScoreParam {
                assert_eq!(spec.score.def().unwrap().param.unwrap().name, t.arg.name);
            }
        }
    }
}

/// The walker drops unit-test modules (with braces in strings) and keeps what follows them.
#[test]
fn test_modules_are_not_counted_but_code_after_them_is() {
    let code = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() { let s = \"}\"; let c = '{'; Mask::Causal; }\n}\nfn b() { Mask::Local }\n";
    let kept = without_test_modules(code);
    assert!(!mentions(&kept, "causal"), "{kept}");
    assert!(mentions(&kept, "local"), "{kept}");
    assert!(kept.contains("fn a()") && kept.contains("fn b()"), "{kept}");
    let attr_only = "#[cfg(test)]\nuse x::Mask;\nfn f() { Mask::Causal }";
    assert!(mentions(&without_test_modules(attr_only), "causal"));
}
