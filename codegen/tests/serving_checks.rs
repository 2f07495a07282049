//! Host-side serving checks (variants.md section 13): every error case names its array and
//! index, and on random bad layouts the checks agree with the reference's own input checks.

use attnforge_codegen::masks::DocRule;
use attnforge_codegen::serving::{
    validate_cu_seqlens, validate_serving, DocIds, KeyLayout, ServingGeometry, ServingProblem,
};
use attnforge_reference as r;

fn paged<'a>(table: &'a [i32], seqlens: &'a [i32], cu_q: &'a [i32]) -> ServingProblem<'a> {
    ServingProblem {
        heads_q: 4,
        heads_kv: 2,
        head_dim: 8,
        value_dim: 8,
        total_q: *cu_q.last().unwrap_or(&0) as usize,
        cu_seqlens_q: cu_q,
        keys: KeyLayout::Paged {
            num_pages: 6,
            page_size: 4,
            block_table: table,
            max_pages: 3,
            seqlens_k: seqlens,
        },
        sq_gt_sk_allowed: false,
        doc: None,
    }
}

// sequence 0: 9 keys on pages 5, 0, 3; sequence 1: 4 keys sharing page 5; sequence 2: none
const TABLE: [i32; 9] = [5, 0, 3, 5, -1, -1, -1, -1, -1];
const SEQLENS: [i32; 3] = [9, 4, 0];
const CU_Q: [i32; 4] = [0, 2, 3, 3];

#[track_caller]
fn expect(p: &ServingProblem<'_>, path: &str, words: &str) {
    let errs = validate_serving(p).unwrap_err();
    let e = errs
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}` in {errs:?}"));
    let text = e.to_string();
    assert!(text.contains(words), "{text}");
    assert!(!e.fix.is_empty(), "{text}");
}

#[test]
fn valid_layouts_pass_with_their_geometry() {
    let g = validate_serving(&paged(&TABLE, &SEQLENS, &CU_Q)).unwrap();
    assert_eq!(
        g,
        ServingGeometry {
            batch: 3,
            max_seqlen_q: 2,
            max_seqlen_k: 9
        }
    );
    let v = ServingProblem {
        keys: KeyLayout::Varlen {
            total_k: 13,
            cu_seqlens_k: &[0, 9, 13, 13],
        },
        ..paged(&TABLE, &SEQLENS, &CU_Q)
    };
    assert_eq!(validate_serving(&v).unwrap().max_seqlen_k, 9);
    // no sequences at all; page size 1 and 1024
    let none = ServingProblem {
        total_q: 0,
        cu_seqlens_q: &[0],
        keys: KeyLayout::Paged {
            num_pages: 0,
            page_size: 1024,
            block_table: &[],
            max_pages: 0,
            seqlens_k: &[],
        },
        ..paged(&TABLE, &SEQLENS, &CU_Q)
    };
    assert_eq!(validate_serving(&none).unwrap().batch, 0);
    let ps1 = ServingProblem {
        keys: KeyLayout::Paged {
            num_pages: 3,
            page_size: 1,
            block_table: &[2, 0, 1, 1, 1, 1, 0, 0, 0],
            max_pages: 3,
            seqlens_k: &[3, 2, 0],
        },
        ..paged(&TABLE, &SEQLENS, &CU_Q)
    };
    assert!(validate_serving(&ps1).is_ok());
    // Sq_b > Sk_b where the variant defines it (sequence 2 has 1 query, no key)
    let gt = ServingProblem {
        total_q: 4,
        cu_seqlens_q: &[0, 2, 3, 4],
        sq_gt_sk_allowed: true,
        ..paged(&TABLE, &SEQLENS, &CU_Q)
    };
    assert!(validate_serving(&gt).is_ok());
    expect(
        &ServingProblem {
            sq_gt_sk_allowed: false,
            ..gt
        },
        "cu_seqlens_q[3]",
        "Sq_b = 1 query rows but only Sk_b = 0 keys",
    );
}

#[test]
fn cu_seqlens_errors() {
    let base = paged(&TABLE, &SEQLENS, &CU_Q);
    let with = |cu: &'static [i32], total_q| ServingProblem {
        cu_seqlens_q: cu,
        total_q,
        ..base
    };
    expect(&with(&[], 3), "cu_seqlens_q", "empty");
    expect(&with(&[1, 2, 3, 3], 3), "cu_seqlens_q[0]", "is 1");
    expect(&with(&[-1, 2, 3, 3], 3), "cu_seqlens_q[0]", "is -1");
    expect(
        &with(&[0, 2, 1, 3], 3),
        "cu_seqlens_q[2]",
        "entry before it is 2",
    );
    expect(
        &with(&[0, 2, 3, 3], 4),
        "cu_seqlens_q[3]",
        "packed tensor has 4 rows",
    );
    expect(&with(&[0, -1, 3, 3], 3), "cu_seqlens_q[1]", "is -1");
    assert_eq!(validate_cu_seqlens("x", &[0, 0, 5], 5).unwrap(), vec![0, 5]);
    // varlen keys: length and values
    let v = |cu_k: &'static [i32], total_k| ServingProblem {
        keys: KeyLayout::Varlen {
            total_k,
            cu_seqlens_k: cu_k,
        },
        ..base
    };
    expect(
        &v(&[0, 9, 13], 13),
        "cu_seqlens_k",
        "has 3 entries but cu_seqlens_q has 4",
    );
    expect(
        &v(&[0, 9, 8, 13], 13),
        "cu_seqlens_k[2]",
        "entry before it is 9",
    );
    expect(&v(&[0, 9, 13, 13], 14), "cu_seqlens_k[3]", "has 14 rows");
    expect(&v(&[0, 9, 9, 9], 9), "cu_seqlens_q[2]", "Sq_b = 1");
}

#[test]
fn paged_errors() {
    let base = paged(&TABLE, &SEQLENS, &CU_Q);
    let with_table = |t: &'static [i32]| ServingProblem {
        keys: KeyLayout::Paged {
            num_pages: 6,
            page_size: 4,
            block_table: t,
            max_pages: 3,
            seqlens_k: &SEQLENS,
        },
        ..base
    };
    expect(
        &with_table(&[5, 0, 6, 5, -1, -1, -1, -1, -1]),
        "block_table[0][2]",
        "is page 6, read for keys 8..9",
    );
    expect(
        &with_table(&[5, 0, 3, -1, -1, -1, -1, -1, -1]),
        "block_table[1][0]",
        "is page -1",
    );
    expect(
        &with_table(&[5, 0, 3, 5, -1, -1]),
        "block_table",
        "[B 3, max_pages 3] needs 9",
    );
    // entries past ceil(Sk_b / page_size) are not read
    assert!(validate_serving(&with_table(&[5, 0, 3, 5, 99, -7, 1000, -1, 8])).is_ok());
    let with_lens = |l: &'static [i32]| ServingProblem {
        keys: KeyLayout::Paged {
            num_pages: 6,
            page_size: 4,
            block_table: &TABLE,
            max_pages: 3,
            seqlens_k: l,
        },
        ..base
    };
    expect(
        &with_lens(&[13, 4, 0]),
        "seqlens_k[0]",
        "4 pages of 4 but block_table rows hold only 3 (at most 12 keys)",
    );
    expect(&with_lens(&[9, 4, -1]), "seqlens_k[2]", "is -1");
    expect(
        &with_lens(&[9, 4]),
        "seqlens_k",
        "has 2 entries for 3 sequences",
    );
    for bad in [0usize, 3, 12, 2048] {
        let p = ServingProblem {
            keys: KeyLayout::Paged {
                num_pages: 6,
                page_size: bad,
                block_table: &TABLE,
                max_pages: 3,
                seqlens_k: &SEQLENS,
            },
            ..base
        };
        expect(&p, "page_size", &format!("is {bad}"));
    }
    // every error is reported, not only the first
    let p = ServingProblem {
        keys: KeyLayout::Paged {
            num_pages: 6,
            page_size: 4,
            block_table: &[7, 0, -3, 8, -1, -1, -1, -1, -1],
            max_pages: 3,
            seqlens_k: &SEQLENS,
        },
        ..base
    };
    let paths: Vec<String> = validate_serving(&p)
        .unwrap_err()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        paths,
        [
            "block_table[0][0]",
            "block_table[0][2]",
            "block_table[1][0]"
        ]
    );
}

#[test]
fn sizes_heads_and_32_bit_offsets() {
    let base = paged(&TABLE, &SEQLENS, &CU_Q);
    expect(
        &ServingProblem {
            heads_kv: 3,
            ..base
        },
        "heads_kv",
        "does not divide heads_q (4)",
    );
    expect(
        &ServingProblem {
            head_dim: 0,
            ..base
        },
        "head_dim",
        "got 0",
    );
    // 2^31 / (4 * 8) = 2^26 rows fit in q
    let rows = 1usize << 26;
    let cu = [0, rows as i32];
    let big_q = ServingProblem {
        total_q: rows + 1,
        cu_seqlens_q: &[0, rows as i32 + 1],
        // 2^31 / (2 * 8) = 2^27 rows fit in k
        keys: KeyLayout::Varlen {
            total_k: 2 * rows + 1,
            cu_seqlens_k: &[0, 2 * rows as i32 + 1],
        },
        ..base
    };
    expect(&big_q, &format!("q[{rows}]"), "past element 2^31 - 1");
    expect(&big_q, &format!("k[{}]", rows * 2), "past element 2^31 - 1");
    let fits = ServingProblem {
        total_q: rows,
        cu_seqlens_q: &cu,
        keys: KeyLayout::Varlen {
            total_k: rows,
            cu_seqlens_k: &cu,
        },
        ..base
    };
    assert!(validate_serving(&fits).is_ok());
    // a cache past 2^31 elements: 2^31 / (1024 * 2 * 8) = 2^17 pages
    let pages = 1usize << 17;
    let big_cache = ServingProblem {
        keys: KeyLayout::Paged {
            num_pages: pages + 5,
            page_size: 1024,
            block_table: &TABLE,
            max_pages: 3,
            seqlens_k: &SEQLENS,
        },
        ..base
    };
    expect(
        &big_cache,
        &format!("k_cache[{pages}]"),
        "at most 131072 pages per launch",
    );
    expect(
        &big_cache,
        &format!("v_cache[{pages}]"),
        "past element 2^31 - 1",
    );
}

#[test]
fn doc_ids_are_laid_out_like_the_keys() {
    let base = paged(&TABLE, &SEQLENS, &CU_Q);
    let ids = [1i32; 24];
    let p = ServingProblem {
        doc: Some(DocIds {
            ids: &ids[..13],
            rule: DocRule::Any,
        }),
        ..base
    };
    expect(&p, "doc", "has 13 ids but 24 are needed");
    // the question-prefix rule (share_question): sequence 0 reads pages 5, 0, 3; id 0 at key 4 (page 0 slot 0) after
    // key 0 (page 5 slot 0, id 1) breaks the prefix rule
    let mut ids = [1i32; 24];
    ids[0] = 0;
    let p = ServingProblem {
        doc: Some(DocIds {
            ids: &ids,
            rule: DocRule::QuestionPrefix,
        }),
        ..base
    };
    expect(&p, "doc[0]", "key 4 of sequence 0 has id 0");
    ids[0] = 1;
    ids[20] = 0; // page 5 slot 0: the question prefix of both sequences
    let p = ServingProblem {
        doc: Some(DocIds {
            ids: &ids,
            rule: DocRule::QuestionPrefix,
        }),
        ..base
    };
    assert!(validate_serving(&p).is_ok());
}

/// Random corruptions of a valid layout: the host checks accept exactly what the reference
/// accepts, and the reference's error path is among the host errors.
#[test]
fn host_checks_agree_with_the_reference() {
    let mut rng = r::SplitMix64(19);
    let (hq, hkv, d, ps, np, mp) = (4, 2, 3, 4, 6, 3);
    let q = r::Packed::from_fn(3, hq, d, |t, h, x| (t + h + x) as f32 * 0.1);
    let kc = r::PagedCache::from_fn(np, ps, hkv, d, |p, s, h, x| (p + s + h + x) as f32 * 0.1);
    let vc = kc.clone();
    let picks = [-2, -1, 0, 1, 2, 3, 4, 5, 6, 9, 12, 13, i32::MAX];
    let (mut agree_ok, mut agree_err) = (0, 0);
    for it in 0..4000 {
        let mut cu = CU_Q.to_vec();
        let mut table = TABLE.to_vec();
        let mut lens = SEQLENS.to_vec();
        for _ in 0..1 + rng.below(2) {
            let v = picks[rng.below(picks.len())];
            match rng.below(4) {
                0 => {
                    let i = rng.below(cu.len());
                    cu[i] = v;
                }
                1 => table[rng.below(9)] = v,
                2 => lens[rng.below(3)] = v,
                _ => {
                    cu.pop();
                }
            }
        }
        let allowed = it % 2 == 0;
        let mask = if allowed {
            r::Mask::Causal
        } else {
            r::Mask::Local { left: 2, right: 0 }
        };
        let host = validate_serving(&ServingProblem {
            heads_q: hq,
            heads_kv: hkv,
            head_dim: d,
            value_dim: d,
            total_q: 3,
            cu_seqlens_q: &cu,
            keys: KeyLayout::Paged {
                num_pages: np,
                page_size: ps,
                block_table: &table,
                max_pages: mp,
                seqlens_k: &lens,
            },
            sq_gt_sk_allowed: allowed,
            doc: None,
        });
        let kv = r::PagedKv {
            k_cache: &kc,
            v_cache: &vc,
            block_table: &table,
            max_pages: mp,
            seqlens_k: &lens,
        };
        let refr = r::paged_attention(
            &q,
            &cu,
            &kv,
            &mask,
            &r::ScoreMod::None,
            &r::AttnOptions::reference(),
        );
        match (&host, &refr) {
            (Ok(_), Ok(_)) => agree_ok += 1,
            (Err(errs), Err(e)) => {
                let path = match e {
                    r::ServingError::Input { path, .. } => path.clone(),
                    r::ServingError::Sequence { seq, .. } => format!("cu_seqlens_q[{}]", seq + 1),
                };
                assert!(
                    errs.iter().any(|h| h.path == path),
                    "cu {cu:?} table {table:?} lens {lens:?}: reference `{e}` not among {errs:?}"
                );
                agree_err += 1;
            }
            _ => panic!(
                "cu {cu:?} table {table:?} lens {lens:?}: host {host:?} vs reference {refr:?}"
            ),
        }
    }
    assert!(
        agree_ok > 200 && agree_err > 1000,
        "{agree_ok} ok, {agree_err} errors"
    );
}

/// The decode split count (values worked by hand): enough blocks for twice the SMs, capped
/// by the key tiles of the longest sequence, at least 1.
#[test]
fn decode_splits_fill_the_device_within_the_key_tiles() {
    use attnforge_codegen::serving::{decode_splits, validate_decode};
    // B 1, Hq 32 on Hkv 8 (4 packed rows: one 64-row block) -> 8 blocks; 264 / 8 = 33 splits
    assert_eq!(decode_splits(1, (32, 8), (1, 8192), (64, 64), 132), 33);
    // 100 keys are 2 tiles of 64
    assert_eq!(decode_splits(1, (32, 8), (1, 100), (64, 64), 132), 2);
    // 64 sequences x 8 kv heads = 512 blocks >= 264: no split
    assert_eq!(decode_splits(64, (32, 8), (1, 8192), (64, 64), 132), 1);
    // group 8 x 16 tokens = 128 rows: 2 row blocks of 64 per kv head -> 4 blocks, 66 splits
    assert_eq!(decode_splits(1, (16, 2), (16, 8192), (64, 64), 132), 66);
    // no keys: 1
    assert_eq!(decode_splits(1, (8, 8), (1, 0), (64, 64), 132), 1);
    let paths = |r: Result<(), Vec<attnforge_codegen::check::SpecError>>| -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(
        paths(validate_decode(&[0, 1, 3], &[5, 9], 0)),
        ["num_splits"]
    );
    assert_eq!(
        paths(validate_decode(&[0, 1, 18], &[5, 90], 1)),
        ["cu_seqlens_q[2]"]
    );
    assert_eq!(
        paths(validate_decode(&[0, 6, 7], &[5, 9], 2)),
        ["cu_seqlens_q[1]"]
    );
    assert!(validate_decode(&[0, 6, 7], &[5, 9], 1).is_ok());
}
