//! `attnforge check --layout varlen|paged|decode|decode_varlen`: catalog variants in the serving layouts on the
//! simulator, the variants a layout cannot serve listed as SKIP with the reason, and the
//! serving layouts refused on a GPU backend.

mod cli_common;

use cli_common::*;

#[test]
fn check_runs_catalog_variants_in_the_serving_layouts() {
    for layout in ["varlen", "paged", "decode", "decode_varlen"] {
        let o = run(&[
            "check",
            "flash_fwd_causal_d64_f16",
            "flash_fwd_local_softcap_d64_f16",
            "--layout",
            layout,
        ]);
        let t = text(&o);
        assert!(o.status.success(), "{layout}: {t}");
        assert!(
            t.contains(&format!("PASS flash_fwd_causal_d64_f16_{layout}__")),
            "{t}"
        );
        assert!(
            t.contains(&format!("PASS flash_fwd_local_softcap_d64_f16_{layout}__")),
            "{t}"
        );
        assert!(t.contains("2 kernels passed"), "{t}");
        if layout.starts_with("decode") {
            // the run at the decode model's split count says what it chose
            assert!(t.contains("key split"), "{layout}: {t}");
            assert!(t.contains("decode model's choice"), "{layout}: {t}");
        }
    }
}

#[test]
fn check_lists_what_a_layout_cannot_serve() {
    let o = run(&["check", "flash_fwd_document_d128_bf16", "--layout", "paged"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("SKIP flash_fwd_document_d128_bf16"), "{t}");
    assert!(t.contains("read through the page table"), "{t}");
    assert!(t.contains("0 kernels passed, 1 skipped"), "{t}");
}

/// The serving layouts run on the GPU backend (`exec_serving::check_cuda`); without a GPU the
/// check fails naming it (exit 1), never passes.
#[test]
fn serving_layouts_run_on_the_gpu_backend_or_report_no_gpu() {
    let o = run(&[
        "check",
        "flash_fwd_causal_d64_f16",
        "--layout",
        "varlen",
        "--backend",
        "cuda",
    ]);
    let t = text(&o);
    if attnforge::kernels::gpu_available() {
        assert!(o.status.success(), "{t}");
    } else {
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(
            t.contains("FAIL flash_fwd_causal_d64_f16_varlen") && t.contains("no GPU"),
            "{t}"
        );
    }
}

fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 11) % 23) as f32 / 23.0 - 0.5)
        .collect()
}

/// `run` of a varlen, a paged and two decode spec files on the simulator equals `run` on the reference
/// (out [Tq, Hq, D], lse [Hq, Tq]); a missing layout array is an error naming the flag.
#[test]
fn run_takes_the_layout_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let c = npyz::Order::C;
    write_npy(&p("q.npy"), &[5, 2, 64], &vals(5 * 2 * 64, 1), c);
    write_npy(&p("k.npy"), &[9, 2, 64], &vals(9 * 2 * 64, 2), c);
    write_npy(&p("v.npy"), &[9, 2, 64], &vals(9 * 2 * 64, 3), c);
    write_npy(&p("kc.npy"), &[4, 4, 2, 64], &vals(4 * 4 * 2 * 64, 4), c);
    write_npy(&p("vc.npy"), &[4, 4, 2, 64], &vals(4 * 4 * 2 * 64, 5), c);
    write_npy(&p("cq.npy"), &[3], &[0i32, 2, 5], c);
    write_npy(&p("ck.npy"), &[3], &[0i32, 4, 9], c);
    write_npy(&p("bt.npy"), &[2, 3], &[3i32, -1, -1, 1, 0, 2], c);
    write_npy(&p("sk.npy"), &[2], &[3i32, 9], c);
    for layout in ["varlen", "paged", "decode", "decode_varlen"] {
        let paged = layout == "paged" || layout == "decode";
        let spec = p(&format!("{layout}.toml"));
        let toml =
            format!("dtype = \"f32\"\nhead_dim = 64\nlayout = \"{layout}\"\nmask = \"causal\"\n");
        std::fs::write(&spec, toml).unwrap();
        let s = |n: &str| p(n).to_string_lossy().to_string();
        let (kf, vf) = if paged {
            ("kc.npy", "vc.npy")
        } else {
            ("k.npy", "v.npy")
        };
        let mut outs = Vec::new();
        for backend in ["sim", "reference"] {
            let (o, l) = (
                s(&format!("o_{layout}_{backend}.npy")),
                s(&format!("l_{layout}_{backend}.npy")),
            );
            let mut args = vec![
                "run".to_string(),
                spec.to_string_lossy().to_string(),
                "--q".into(),
                s("q.npy"),
                "--k".into(),
                s(kf),
                "--v".into(),
                s(vf),
                "--cu-seqlens-q".into(),
                s("cq.npy"),
                "--out".into(),
                o.clone(),
                "--lse".into(),
                l.clone(),
                "--backend".into(),
                backend.into(),
            ];
            if paged {
                args.extend([
                    "--block-table".into(),
                    s("bt.npy"),
                    "--seqlens-k".into(),
                    s("sk.npy"),
                ]);
            } else {
                args.extend(["--cu-seqlens-k".into(), s("ck.npy")]);
            }
            if layout.starts_with("decode") {
                // two splits: the decode kernel's f32 partials and the merge kernel
                args.extend(["--num-splits".into(), "2".into()]);
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(&argv);
            assert!(out.status.success(), "{layout} {backend}: {}", text(&out));
            let (os, od) = read_f32(std::path::Path::new(&o));
            let (ls, ld) = read_f32(std::path::Path::new(&l));
            assert_eq!((os, ls), (vec![5, 2, 64], vec![2, 5]), "{layout}");
            outs.push((od, ld));
        }
        let err = outs[0]
            .0
            .iter()
            .zip(&outs[1].0)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "{layout}: sim vs reference out error {err}");
        assert!(
            outs[0]
                .1
                .iter()
                .zip(&outs[1].1)
                .all(|(a, b)| (a - b).abs() < 1e-4),
            "{layout}: lse"
        );
        // a missing layout array names the flag
        let argv = [
            "run",
            spec.to_str().unwrap(),
            "--q",
            &s("q.npy"),
            "--k",
            &s(kf),
            "--v",
            &s(vf),
            "--out",
            &s("x.npy"),
        ];
        let out = run(&argv);
        assert!(
            !out.status.success() && text(&out).contains("--cu-seqlens-q"),
            "{}",
            text(&out)
        );
    }
}

/// `run` of a decode spec without `--num-splits` launches with the decode tuner's model's
/// split count for its tile and shape, says so, and still equals the reference; with
/// `--num-splits` it says that instead.
#[test]
fn run_of_a_decode_spec_takes_the_models_split_count() {
    use attnforge::autotune::decode::{model_splits, DecodeLaunch};
    use attnforge::codegen::tile::{default_tile, Arch};
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let c = npyz::Order::C;
    // 2 sequences of 1 token over 700 and 2000 keys of 16-key pages, Hq 8 on Hkv 2
    let (pages, hq, hkv) = (44 + 125u64, 8u64, 2u64);
    let path = |n: &str| std::path::PathBuf::from(p(n));
    write_npy(
        &path("q.npy"),
        &[2, hq, 64],
        &vals(2 * hq as usize * 64, 1),
        c,
    );
    for (n, seed) in [("kc.npy", 2), ("vc.npy", 3)] {
        let len = (pages * 16 * hkv * 64) as usize;
        write_npy(&path(n), &[pages, 16, hkv, 64], &vals(len, seed), c);
    }
    let mut table = vec![-1i32; 2 * 125];
    (0..44).for_each(|i| table[i] = 168 - i as i32); // permuted pages
    (0..125).for_each(|i| table[125 + i] = i as i32);
    write_npy(&path("bt.npy"), &[2, 125], &table, c);
    write_npy(&path("cq.npy"), &[3], &[0i32, 1, 2], c);
    write_npy(&path("sk.npy"), &[2], &[700i32, 2000], c);
    let toml =
        "dtype = \"bf16\"\nhead_dim = 64\nlayout = \"decode\"\nmask = \"causal\"\ngqa = true\n";
    std::fs::write(p("d.toml"), toml).unwrap();
    let go = |backend: &str, extra: &[&str]| {
        let (spec, q, kc, vc, cq) = (
            p("d.toml"),
            p("q.npy"),
            p("kc.npy"),
            p("vc.npy"),
            p("cq.npy"),
        );
        let (bt, sk, o) = (p("bt.npy"), p("sk.npy"), p(&format!("o_{backend}.npy")));
        let mut argv = vec![
            "run",
            &spec,
            "--q",
            &q,
            "--k",
            &kc,
            "--v",
            &vc,
            "--cu-seqlens-q",
            &cq,
        ];
        argv.extend([
            "--block-table",
            &bt,
            "--seqlens-k",
            &sk,
            "--out",
            &o,
            "--backend",
            backend,
        ]);
        argv.extend(extra);
        let out = run(&argv);
        assert!(out.status.success(), "{backend}: {}", text(&out));
        (text(&out), read_f32(std::path::Path::new(&o)).1)
    };
    let spec = attnforge::specfile::SpecFile::load(&path("d.toml"))
        .unwrap()
        .spec;
    let tile = default_tile(&spec, Arch::Sm90).unwrap();
    let launch = DecodeLaunch {
        batch: 2,
        heads_q: 8,
        heads_kv: 2,
        max_seq_q: 1,
        max_seq_k: 2000,
    };
    let k = model_splits(&spec, &tile, launch, Arch::Sm90)
        .unwrap()
        .splits
        .unwrap();
    assert!(k > 1, "2 sequences on 2 kv heads over 2000 keys split: {k}");
    let (said, sim) = go("sim", &[]);
    let want = format!(
        "{k} key splits (the decode model's choice for {}",
        tile.suffix()
    );
    assert!(said.contains(&want), "{said}");
    let (_, reference) = go("reference", &[]);
    let err = sim
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 2e-2, "sim at {k} splits vs reference: {err}");
    let (said, _) = go("sim", &["--num-splits", "3"]);
    assert!(said.contains("3 key splits (--num-splits)"), "{said}");
}

/// `emit` of a decode spec writes the decode kernel and its split-KV merge kernel, each with
/// launch metadata (the decode grid over kv heads and splits).
#[test]
fn emit_writes_the_decode_and_merge_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("decode.toml");
    std::fs::write(
        &spec,
        "dtype = \"bf16\"\nhead_dim = 64\nlayout = \"decode\"\nmask = \"causal\"\ngqa = true\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "emit",
        spec.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--no-ptxas",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("flash_fwd_causal_d64_bf16_gqa_decode.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["grid"][1], "heads_kv", "{meta}");
    let names: Vec<&str> = meta["signature"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.ends_with(&["num_splits", "o_part", "lse_part"]),
        "{names:?}"
    );
    assert!(out.join("af_split_merge_d64_bf16.cu").exists());
    assert!(out.join("af_split_merge_d64_bf16.json").exists());
}

/// The decode inputs of `SpecFile::run_serving`: one token per sequence over `sk` keys of a
/// paged cache of 16-key pages (pages of the first sequence permuted), Hq 8 on Hkv 2, d 64.
fn decode_inputs(sk: &[i32]) -> attnforge::exec_serving::ServingInputs<half::bf16> {
    use attnforge::exec_serving::{ServingInputs, ServingKeys};
    use attnforge::reference::{Packed, PagedCache};
    let bf = |n: usize, seed: usize| -> Vec<half::bf16> {
        vals(n, seed)
            .into_iter()
            .map(half::bf16::from_f32)
            .collect()
    };
    let per: Vec<usize> = sk.iter().map(|&k| (k as usize).div_ceil(16)).collect();
    let (pages, max_pages) = (per.iter().sum::<usize>(), *per.iter().max().unwrap());
    let mut table = vec![-1i32; sk.len() * max_pages];
    let mut next = 0;
    for (b, &n) in per.iter().enumerate() {
        for i in 0..n {
            let page = if b == 0 { n - 1 - i } else { next + i };
            table[b * max_pages + i] = page as i32;
        }
        next += n;
    }
    let cache = |seed| PagedCache::from_vec(pages, 16, 2, 64, bf(pages * 16 * 2 * 64, seed));
    let b = sk.len();
    ServingInputs {
        q: Packed::from_vec(b, 8, 64, bf(b * 8 * 64, 1)).unwrap(),
        cu_seqlens_q: (0..=b as i32).collect(),
        keys: ServingKeys::Paged {
            k_cache: cache(2).unwrap(),
            v_cache: cache(3).unwrap(),
            block_table: table,
            max_pages,
            seqlens_k: sk.to_vec(),
        },
    }
}

/// `SpecFile::run_serving` (the library entry point Python uses) of a decode spec without a
/// split count launches with the decode model's count (`decode_split_choice`, the function
/// `run` and `check` print): more than one split over 700 and 2000 keys, one over 40 keys;
/// the result equals the run at that count bit for bit and the reference within bf16's error.
#[test]
fn run_serving_takes_the_decode_models_split_count() {
    use attnforge::autotune::decode::{model_splits, DecodeLaunch};
    use attnforge::codegen::tile::Arch;
    use attnforge::specfile::{decode_split_choice, ServingBackend, SpecFile};
    let toml =
        "dtype = \"bf16\"\nhead_dim = 64\nlayout = \"decode\"\nmask = \"causal\"\ngqa = true\n";
    let sf = SpecFile::parse(toml, None).unwrap();
    let tile = sf.tile().unwrap();
    let model = |max_seq_k| {
        let launch = DecodeLaunch {
            batch: 2,
            heads_q: 8,
            heads_kv: 2,
            max_seq_q: 1,
            max_seq_k,
        };
        model_splits(&sf.spec, &tile, launch, Arch::Sm90)
            .unwrap()
            .splits
            .unwrap()
    };
    let short = decode_inputs(&[40, 17]);
    assert_eq!(
        decode_split_choice(&sf.spec, &tile, &short, None).splits,
        Some(1)
    );
    assert_eq!(model(40), 1);
    let long = decode_inputs(&[700, 2000]);
    let k = model(2000);
    assert!(k > 1, "2 sequences on 2 kv heads over 2000 keys split: {k}");
    let chosen = decode_split_choice(&sf.spec, &tile, &long, None);
    assert_eq!(chosen.splits, Some(k), "{}", chosen.why);
    let go = |splits, backend| sf.run_serving(&long, None, splits, backend).unwrap();
    let default = go(None, ServingBackend::Sim);
    let at_k = go(Some(k), ServingBackend::Sim);
    let unsplit = go(Some(1), ServingBackend::Sim);
    let bits = |o: &attnforge::reference::VarlenOutput| -> Vec<u64> {
        o.out.iter().chain(&o.lse).map(|x| x.to_bits()).collect()
    };
    assert_eq!(
        bits(&default),
        bits(&at_k),
        "not launched at the model's {k} splits"
    );
    assert_ne!(
        bits(&default),
        bits(&unsplit),
        "the split run rounds differently"
    );
    let reference = go(
        None,
        ServingBackend::Reference(attnforge::reference::Precision::F64),
    );
    let err = default
        .out
        .iter()
        .zip(&reference.out)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(err < 2e-2, "sim at {k} splits vs reference: {err}");
}

/// `check --layout paged` of the fused top-k and landmark specs runs them on a paged cache
/// (page sizes 1, 16, 128) against the per-sequence reference; the families that read dense
/// keys only are SKIP with the reason.
#[test]
fn check_runs_the_key_selecting_families_on_a_paged_cache() {
    let o = run(&[
        "check",
        "examples/specs/topk.toml",
        "examples/specs/landmark_retrieval.toml",
        "examples/specs/cca.toml",
        "--layout",
        "paged",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("PASS topk_d128_f16_paged"), "{t}");
    assert!(t.contains("PASS landmark_retrieval_d64_bf16_paged"), "{t}");
    assert!(t.contains("(3 problems)"), "{t}");
    assert!(t.contains("SKIP cca_"), "{t}");
    assert!(t.contains("reads dense keys only"), "{t}");
}
