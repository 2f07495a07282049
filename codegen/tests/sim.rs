//! End-to-end: run the exact emitted CUDA on the CPU simulator (`attnforge-sim`, a
//! dev-dependency) and compare with an f64 reference written here from variants.md, and
//! compare the tile counters with the host-side classification.
//!
//! Needs g++ (C++20). Builds are cached by the simulator.

use std::collections::HashMap;

use attnforge_codegen::blocks::{classify_tile, BlockLists, HostMask, TileKind};
use attnforge_codegen::catalog::{example_mask_fn, example_score_fn};
use attnforge_codegen::masks::MaskParams;
use attnforge_codegen::prelude::*;
use attnforge_sim::{Schedule, SimArg, SimConfig, SimCounters, SimKernel};
use half::{bf16, f16};

/// Deterministic inputs in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Round to the kernel dtype (the reference sees exactly what the kernel reads).
fn round(d: DType, x: f64) -> f64 {
    match d {
        DType::F32 => x as f32 as f64,
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::Bf16 => bf16::from_f64(x).to_f64(),
    }
}

/// Runtime values of a case.
#[derive(Clone, Default)]
struct Rt {
    window_left: i32,
    window_right: i32,
    prefix_len: i32,
    window: i32,
    global_tokens: i32,
    local_window: i32,
    dist_limit: i32,
    doc_block: i32,
    rope_theta: f32,
    softcap: f32,
    doc: Vec<i32>,
    lists: Option<BlockLists>,
    stride: i32,
    alibi: Vec<f32>,
    bias: Vec<f32>,
    decay: f32,
}

struct Case {
    spec: KernelSpec,
    tile: TileConfig,
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    rt: Rt,
    /// Padding of o's rows (elements): o's row stride is `D + o_pad`.
    o_pad: usize,
}

fn host_mask(spec: &KernelSpec, rt: &Rt, sk: usize) -> Option<HostMask> {
    let Mask::Builtin(m) = spec.mask else {
        return None;
    };
    // Every parameter the case carries, by name: the mask takes its own from it.
    let all = MaskParams::new()
        .with("window_left", rt.window_left)
        .with("window_right", rt.window_right)
        .with("prefix_len", rt.prefix_len)
        .with("window", rt.window)
        .with("global_tokens", rt.global_tokens)
        .with("local_window", rt.local_window)
        .with("dist_limit", rt.dist_limit)
        .with("doc_block", rt.doc_block)
        .with("rope_theta", rt.rope_theta);
    Some(HostMask::new(m, &all).with_doc(rt.doc.clone(), sk))
}

fn dilated(stride: i32, p: i64, j: i64) -> bool {
    j <= p && (p - j) % stride as i64 == 0
}

/// allowed(b, h, p, j) of the case (without block lists).
fn allowed(c: &Case, b: usize, h: usize, p: i64, j: i64) -> bool {
    match &c.spec.mask {
        Mask::Predicate(_) => dilated(c.rt.stride, p, j),
        Mask::BlockSparse { .. } => {
            let l = c.rt.lists.as_ref().unwrap();
            let bs = c.spec.sparse_block;
            let i = p - (c.sk as i64 - c.sq as i64);
            let (r, col) = ((i as usize) / bs.q, (j as usize / bs.k) as i32);
            l.full(b, h, r).contains(&col) || l.partial(b, h, r).contains(&col)
        }
        _ => host_mask(&c.spec, &c.rt, c.sk).unwrap().allowed(b, h, p, j),
    }
}

fn rope(x: &[f64], t: f64, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut y = x.to_vec();
    for m in 0..d / 2 {
        let f = theta.powf(-2.0 * m as f64 / d as f64);
        let (s, co) = (t * f).sin_cos();
        y[m] = x[m] * co - x[m + d / 2] * s;
        y[m + d / 2] = x[m + d / 2] * co + x[m] * s;
    }
    y
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// f64 reference: (out [B, Hq, Sq, D], lse [B, Hq, Sq]) from q [B,Hq,Sq,D], k/v [B,Hkv,Sk,D].
fn reference(c: &Case, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d = c.spec.head_dim.get();
    let scale = c.spec.effective_scale() as f64;
    let shift = c.sk as i64 - c.sq as i64;
    let mut out = vec![0.0; c.b * c.hq * c.sq * d];
    let mut lse = vec![f64::NEG_INFINITY; c.b * c.hq * c.sq];
    let theta = c.rt.rope_theta as f64;
    for b in 0..c.b {
        for h in 0..c.hq {
            let hk = h / (c.hq / c.hkv);
            for i in 0..c.sq {
                let p = i as i64 + shift;
                let qi = &q[((b * c.hq + h) * c.sq + i) * d..][..d];
                let mut s = Vec::new();
                for j in 0..c.sk {
                    if !allowed(c, b, h, p, j as i64) {
                        continue;
                    }
                    let kj = &k[((b * c.hkv + hk) * c.sk + j) * d..][..d];
                    let mut x = if matches!(c.spec.mask, Mask::LmInfinite) {
                        if p - (j as i64) < c.rt.local_window as i64 {
                            dot(&rope(qi, p as f64, theta), &rope(kj, j as f64, theta))
                        } else {
                            let deff = (c.rt.dist_limit as i64).min(c.sk as i64 - 1);
                            dot(&rope(qi, deff as f64, theta), kj)
                        }
                    } else {
                        dot(qi, kj)
                    } * scale;
                    x = match &c.spec.score {
                        ScoreMod::None => x,
                        ScoreMod::Softcap => c.rt.softcap as f64 * (x / c.rt.softcap as f64).tanh(),
                        ScoreMod::Alibi => x - c.rt.alibi[h] as f64 * (p - j as i64).abs() as f64,
                        ScoreMod::User(_) => {
                            x + c.rt.bias[h] as f64
                                - c.rt.decay as f64 * (p - j as i64).abs() as f64
                        }
                    };
                    s.push((j, x));
                }
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x.1 - m).exp()).sum();
                lse[(b * c.hq + h) * c.sq + i] = m + z.ln();
                for (j, x) in s {
                    let w = (x - m).exp() / z;
                    for t in 0..d {
                        out[((b * c.hq + h) * c.sq + i) * d + t] +=
                            w * v[((b * c.hkv + hk) * c.sk + j) * d + t];
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Expected (full, partial, mask evals) tile counters from the host-side classification.
fn expected_counters(c: &Case) -> (u64, u64, u64) {
    let (bm, bn) = (c.tile.block_m, c.tile.block_n);
    let shift = c.sk as i64 - c.sq as i64;
    let (mut full, mut part, mut evals) = (0, 0, 0);
    for b in 0..c.b {
        for h in 0..c.hq {
            for mb in 0..c.sq.div_ceil(bm) {
                let rows = bm.min(c.sq - mb * bm) as u64;
                let (plo, phi) = (
                    (mb * bm) as i64 + shift,
                    (mb * bm) as i64 + rows as i64 - 1 + shift,
                );
                let mut visit = |kind: TileKind, n0: usize| {
                    let cols = bn.min(c.sk - n0) as u64;
                    match kind {
                        TileKind::Full => full += 1,
                        TileKind::Partial => {
                            part += 1;
                            let has_mask = !matches!(c.spec.mask, Mask::BlockSparse { mask: None });
                            evals += if has_mask { rows * cols } else { 0 };
                        }
                        TileKind::Skip => {}
                    }
                };
                if let Some(l) = &c.rt.lists {
                    let bs = c.spec.sparse_block;
                    let r = mb * bm / bs.q;
                    for (kind, list) in [
                        (TileKind::Full, l.full(b, h, r)),
                        (TileKind::Partial, l.partial(b, h, r)),
                    ] {
                        for &blk in list {
                            for sub in 0..bs.k / bn {
                                let n0 = blk as usize * bs.k + sub * bn;
                                if n0 < c.sk {
                                    visit(kind, n0);
                                }
                            }
                        }
                    }
                } else {
                    let hm = host_mask(&c.spec, &c.rt, c.sk).unwrap();
                    for n0 in (0..c.sk).step_by(bn) {
                        let c1 = (n0 + bn).min(c.sk) as i64 - 1;
                        let kind = classify_tile(&hm, plo, phi, n0 as i64, c1).unwrap();
                        visit(kind, n0);
                    }
                }
            }
        }
    }
    (full, part, evals)
}

enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    I32(Vec<i32>),
}

fn tensor(d: DType, x: &[f64]) -> Buf {
    match d {
        DType::F32 => Buf::F32(x.iter().map(|&v| v as f32).collect()),
        DType::F16 => Buf::F16(x.iter().map(|&v| f16::from_f64(v)).collect()),
        DType::Bf16 => Buf::Bf16(x.iter().map(|&v| bf16::from_f64(v)).collect()),
    }
}

fn to_f64(b: &Buf) -> Vec<f64> {
    match b {
        Buf::F32(v) => v.iter().map(|&x| x as f64).collect(),
        Buf::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Buf::Bf16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Buf::I32(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Run a case on the simulator under `schedule`; returns (out [B,Hq,Sq,D] in BHSD order, lse, counters).
fn run(
    c: &Case,
    kern: &SimKernel,
    q_in: &[f64],
    k_in: &[f64],
    v_in: &[f64],
    schedule: Schedule,
) -> (Vec<f64>, Vec<f32>, SimCounters) {
    launch(c, kern, q_in, k_in, v_in, schedule).unwrap_or_else(|e| panic!("{}: {e}", kern.name()))
}

/// One simulator launch; o is `[B, H, S, D]` with rows padded by `c.o_pad` (returned unpadded).
fn launch(
    c: &Case,
    kern: &SimKernel,
    q_in: &[f64],
    k_in: &[f64],
    v_in: &[f64],
    schedule: Schedule,
) -> Result<(Vec<f64>, Vec<f32>, SimCounters), String> {
    let d = c.spec.head_dim.get();
    let dt = c.spec.dtype;
    // q and o in [B, H, S, D]; k and v in [B, S, H, D] (strides exercise both layouts)
    let mut k_bshd = vec![0.0; k_in.len()];
    let mut v_bshd = vec![0.0; v_in.len()];
    for b in 0..c.b {
        for h in 0..c.hkv {
            for s in 0..c.sk {
                for t in 0..d {
                    let src = ((b * c.hkv + h) * c.sk + s) * d + t;
                    let dst = ((b * c.sk + s) * c.hkv + h) * d + t;
                    k_bshd[dst] = k_in[src];
                    v_bshd[dst] = v_in[src];
                }
            }
        }
    }
    let mut bufs: HashMap<&str, Buf> = HashMap::new();
    bufs.insert("q", tensor(dt, q_in));
    bufs.insert("k", tensor(dt, &k_bshd));
    bufs.insert("v", tensor(dt, &v_bshd));
    let od = d + c.o_pad;
    bufs.insert("o", tensor(dt, &vec![7.0; c.b * c.hq * c.sq * od]));
    bufs.insert("lse", Buf::F32(vec![7.0; c.b * c.hq * c.sq]));
    let rt = &c.rt;
    if !rt.doc.is_empty() {
        bufs.insert("doc", Buf::I32(rt.doc.clone()));
    }
    if let Some(l) = &rt.lists {
        bufs.insert("blk_full_num", Buf::I32(l.full_num.clone()));
        bufs.insert("blk_full_idx", Buf::I32(l.full_idx.clone()));
        bufs.insert("blk_partial_num", Buf::I32(l.partial_num.clone()));
        bufs.insert("blk_partial_idx", Buf::I32(l.partial_idx.clone()));
    }
    bufs.insert("alibi_slopes", Buf::F32(rt.alibi.clone()));
    bufs.insert("us_bias", Buf::F32(rt.bias.clone()));
    let (sb_q, sh_q, ss_q) = ((c.hq * c.sq * d) as i64, (c.sq * d) as i64, d as i64);
    let (sb_k, sh_k, ss_k) = ((c.sk * c.hkv * d) as i64, d as i64, (c.hkv * d) as i64);
    let list = rt.lists.as_ref();
    let mut scalars: HashMap<&str, SimArg<'_>> = HashMap::from([
        ("batch", SimArg::I32(c.b as i32)),
        ("heads_q", SimArg::I32(c.hq as i32)),
        ("heads_kv", SimArg::I32(c.hkv as i32)),
        ("seq_q", SimArg::I32(c.sq as i32)),
        ("seq_k", SimArg::I32(c.sk as i32)),
        ("q_stride_b", SimArg::I64(sb_q)),
        ("q_stride_h", SimArg::I64(sh_q)),
        ("q_stride_s", SimArg::I64(ss_q)),
        ("o_stride_b", SimArg::I64((c.hq * c.sq * od) as i64)),
        ("o_stride_h", SimArg::I64((c.sq * od) as i64)),
        ("o_stride_s", SimArg::I64(od as i64)),
        ("k_stride_b", SimArg::I64(sb_k)),
        ("k_stride_h", SimArg::I64(sh_k)),
        ("k_stride_s", SimArg::I64(ss_k)),
        ("v_stride_b", SimArg::I64(sb_k)),
        ("v_stride_h", SimArg::I64(sh_k)),
        ("v_stride_s", SimArg::I64(ss_k)),
        ("scale", SimArg::F32(c.spec.effective_scale())),
        ("window_left", SimArg::I32(rt.window_left)),
        ("window_right", SimArg::I32(rt.window_right)),
        ("prefix_len", SimArg::I32(rt.prefix_len)),
        ("window", SimArg::I32(rt.window)),
        ("global_tokens", SimArg::I32(rt.global_tokens)),
        ("local_window", SimArg::I32(rt.local_window)),
        ("dist_limit", SimArg::I32(rt.dist_limit)),
        ("rope_theta", SimArg::F32(rt.rope_theta)),
        ("doc_block", SimArg::I32(rt.doc_block)),
        (
            "doc_batch_stride",
            SimArg::I64(if rt.doc.len() > c.sk { c.sk as i64 } else { 0 }),
        ),
        ("softcap", SimArg::F32(rt.softcap)),
        ("um_stride", SimArg::I32(rt.stride)),
        ("us_decay", SimArg::F32(rt.decay)),
        (
            "blk_batches",
            SimArg::I32(list.map_or(0, |l| l.batches as i32)),
        ),
        ("blk_heads", SimArg::I32(list.map_or(0, |l| l.heads as i32))),
        ("blk_rows", SimArg::I32(list.map_or(0, |l| l.rows as i32))),
        ("blk_width", SimArg::I32(list.map_or(0, |l| l.width as i32))),
    ]);
    let arg_list = kernel_args(&c.spec);
    let mut args: Vec<SimArg<'_>> = Vec::new();
    // borrow buffers in argument order
    let mut by_name: HashMap<&str, &mut Buf> = bufs.iter_mut().map(|(k, v)| (*k, v)).collect();
    for a in &arg_list {
        if let Some(s) = scalars.remove(a.name.as_str()) {
            args.push(s);
            continue;
        }
        let buf = by_name
            .remove(a.name.as_str())
            .unwrap_or_else(|| panic!("no value for argument {}", a.name));
        let mutable = matches!(a.kind, ArgKind::Ptr { mutable: true, .. });
        args.push(match (buf, mutable) {
            (Buf::F32(v), true) => SimArg::output(v),
            (Buf::F16(v), true) => SimArg::output(v),
            (Buf::Bf16(v), true) => SimArg::output(v),
            (Buf::F32(v), false) => SimArg::input(v),
            (Buf::F16(v), false) => SimArg::input(v),
            (Buf::Bf16(v), false) => SimArg::input(v),
            (Buf::I32(v), _) => SimArg::input(v),
        });
    }
    let g = LaunchGeometry::new(&c.spec, &c.tile, c.b, c.hq, c.sq);
    let counters = kern
        .launch(
            (g.grid[0], g.grid[1], g.grid[2]),
            g.block[0],
            g.dynamic_smem_bytes as usize,
            &mut args,
            &SimConfig::new(schedule),
        )
        .map_err(|e| e.to_string())?;
    drop(args);
    drop(by_name);
    let raw = to_f64(&bufs["o"]);
    if raw.chunks(od).any(|row| row[d..].iter().any(|&x| x != 7.0)) {
        return Err("the kernel wrote into the padding of o's rows".into());
    }
    let out: Vec<f64> = raw.chunks(od).flat_map(|row| row[..d].to_vec()).collect();
    let lse = match &bufs["lse"] {
        Buf::F32(v) => v.clone(),
        _ => unreachable!(),
    };
    Ok((out, lse, counters))
}

fn check(c: Case) {
    let d = c.spec.head_dim.get();
    let mut rng = Lcg(0x5eed ^ (c.sq as u64 * 131 + c.sk as u64));
    let dt = c.spec.dtype;
    let mut gen = |n: usize| (0..n).map(|_| round(dt, rng.next())).collect::<Vec<f64>>();
    let q = gen(c.b * c.hq * c.sq * d);
    let k = gen(c.b * c.hkv * c.sk * d);
    let v = gen(c.b * c.hkv * c.sk * d);
    let (r_out, r_lse) = reference(&c, &q, &k, &v);
    let em = emit(&c.spec, &c.tile, Arch::Sm80).unwrap();
    let kern =
        SimKernel::build(&em.source, &em.name).unwrap_or_else(|e| panic!("{}: {e}", em.name));
    // output rounding of the dtype plus f32 accumulation
    let tol = match dt {
        DType::F32 => 2e-4,
        DType::F16 => 3e-3,
        DType::Bf16 => 2e-2,
    };
    let want = expected_counters(&c);
    for schedule in [Schedule::Forward, Schedule::Random(7)] {
        let (out, lse, ctr) = run(&c, &kern, &q, &k, &v, schedule);
        let mut empty_rows = 0;
        for row in 0..c.b * c.hq * c.sq {
            if r_lse[row] == f64::NEG_INFINITY {
                empty_rows += 1;
                assert!(
                    lse[row] == f32::NEG_INFINITY,
                    "{}: row {row} should be empty, lse = {}",
                    em.name,
                    lse[row]
                );
                assert!(
                    out[row * d..][..d].iter().all(|&x| x == 0.0),
                    "{}: empty row {row} must be 0",
                    em.name
                );
                continue;
            }
            assert!(
                (lse[row] as f64 - r_lse[row]).abs() < 1e-3 * (1.0 + r_lse[row].abs()),
                "{}: lse row {row}: {} vs {}",
                em.name,
                lse[row],
                r_lse[row]
            );
            for t in 0..d {
                let (x, y) = (out[row * d + t], r_out[row * d + t]);
                assert!(
                    (x - y).abs() <= tol,
                    "{}: out row {row} col {t}: {x} vs {y}",
                    em.name
                );
            }
        }
        let got = (ctr.tiles_full, ctr.tiles_partial, ctr.mask_evals);
        assert_eq!(
            got, want,
            "{}: (full, partial, mask evals) tile counters; {empty_rows} empty rows",
            em.name
        );
    }
}

fn case(
    spec: KernelSpec,
    tile: TileConfig,
    (b, hq, hkv): (usize, usize, usize),
    sq: usize,
    sk: usize,
    rt: Rt,
) -> Case {
    Case {
        spec,
        tile,
        b,
        hq,
        hkv,
        sq,
        sk,
        rt,
        o_pad: 0,
    }
}

fn spec(d: DType, hd: HeadDim, m: Mask, s: ScoreMod) -> KernelSpec {
    KernelSpec::new(d, hd, m, s)
}

const T16: TileConfig = TileConfig {
    block_m: 16,
    block_n: 32,
    warps: 2,
    stages: 1,
    wgmma: false,
    atomic_dq: false,
};

#[test]
fn causal_bf16_d128_bottom_right_and_sq_gt_sk() {
    let s = spec(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    check(case(
        s.clone(),
        TileConfig::new(64, 64, 4, 1),
        (1, 2, 2),
        70,
        100,
        Rt::default(),
    ));
    // Sq > Sk: rows with p(i) < 0 are empty (out 0, lse -inf)
    check(case(
        s,
        TileConfig::new(64, 64, 4, 1),
        (1, 1, 1),
        90,
        40,
        Rt::default(),
    ));
}

#[test]
fn gqa_full_and_causal_f32() {
    let s = spec(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None).with_gqa();
    check(case(s, T16, (2, 4, 2), 37, 37, Rt::default()));
    let s = spec(DType::F32, HeadDim::D64, Mask::Full, ScoreMod::None).with_gqa();
    check(case(s, T16, (1, 3, 1), 20, 45, Rt::default()));
}

#[test]
fn local_softcap_f16_d64() {
    let s = attnforge_codegen::catalog::find("flash_fwd_local_softcap_d64_f16").unwrap();
    let rt = Rt {
        window_left: 20,
        window_right: 5,
        softcap: 2.0,
        ..Rt::default()
    };
    check(case(
        s,
        TileConfig::new(64, 64, 4, 1),
        (1, 1, 1),
        130,
        130,
        rt,
    ));
}

#[test]
fn analytic_masks_f32() {
    let rt = Rt {
        prefix_len: 23,
        window: 9,
        global_tokens: 5,
        local_window: 11,
        window_left: -1,
        window_right: 3,
        ..Rt::default()
    };
    for m in [
        Mask::PrefixLm,
        Mask::GlobalLocal,
        Mask::LambdaMask,
        Mask::Local,
    ] {
        check(case(
            spec(DType::F32, HeadDim::D64, m, ScoreMod::None),
            T16,
            (1, 1, 1),
            60,
            75,
            rt.clone(),
        ));
    }
}

#[test]
fn alibi_and_user_score() {
    let rt = Rt {
        alibi: vec![0.25, 0.0625],
        bias: vec![0.5, -1.0],
        decay: 0.03,
        ..Rt::default()
    };
    check(case(
        spec(DType::F16, HeadDim::D128, Mask::Causal, ScoreMod::Alibi),
        T16,
        (1, 2, 2),
        40,
        50,
        rt.clone(),
    ));
    check(case(
        spec(
            DType::F32,
            HeadDim::D64,
            Mask::Causal,
            ScoreMod::User(example_score_fn()),
        ),
        T16,
        (1, 2, 2),
        40,
        40,
        rt,
    ));
}

fn docs(sk: usize, cuts: &[usize]) -> Vec<i32> {
    (0..sk)
        .map(|j| cuts.iter().filter(|&&c| j >= c).count() as i32)
        .collect()
}

#[test]
fn list_driven_masks_with_builder() {
    let sk = 150;
    let bs = BlockSize { q: 32, k: 32 };
    let doc = docs(sk, &[40, 41, 97]);
    let mut qdoc = docs(sk, &[30, 90]);
    qdoc.iter_mut().for_each(|x| *x = (*x).min(2));
    for (m, dd) in [
        (Mask::Document, doc.clone()),
        (Mask::CausalDocument, doc.clone()),
        (Mask::ShareQuestion, qdoc),
        (Mask::BlockCausalDocument, doc.clone()),
    ] {
        let mut s = spec(DType::F32, HeadDim::D64, m, ScoreMod::None);
        s.sparse_block = bs;
        let mut rt = Rt {
            doc: dd,
            doc_block: 16,
            ..Rt::default()
        };
        let hm = host_mask(&s, &rt, sk).unwrap();
        rt.lists = Some(build_block_lists(1, 1, sk, sk, bs, |b, h, p, j| {
            hm.allowed(b, h, p, j)
        }));
        check(case(s, T16, (1, 1, 1), sk, sk, rt));
    }
}

#[test]
fn user_predicate_and_block_sparse() {
    let (sq, sk) = (70, 100);
    let bs = BlockSize { q: 32, k: 64 };
    let mut s = spec(
        DType::F32,
        HeadDim::D64,
        Mask::Predicate(example_mask_fn()),
        ScoreMod::None,
    );
    s.sparse_block = bs;
    let mut rt = Rt {
        stride: 3,
        ..Rt::default()
    };
    rt.lists = Some(build_block_lists(1, 1, sq, sk, bs, |_, _, p, j| {
        dilated(3, p, j)
    }));
    check(case(s, T16, (1, 1, 1), sq, sk, rt));
    // explicit lists, per head, with full and partial blocks (no mask: partial = in range)
    let mut s = spec(
        DType::F32,
        HeadDim::D64,
        Mask::BlockSparse { mask: None },
        ScoreMod::None,
    );
    s.sparse_block = bs;
    let rows = vec![
        (vec![0], vec![1]),
        (vec![1], vec![]),
        (vec![], vec![]),
        (vec![0, 1], vec![]),
        (vec![], vec![0]),
        (vec![], vec![0, 1]),
    ];
    let rt = Rt {
        lists: Some(BlockLists::from_rows(1, 2, 3, 2, &rows)),
        ..Rt::default()
    };
    check(case(s, T16, (1, 2, 2), sq, sk, rt));
}

/// User device functions live in namespace `afu`: a mask or score function named like a
/// kernel argument (`scale`, `seq_k`) or a main-loop local (`acc`, `p_lo`, `m_i`) is called
/// as `afu::<name>` and cannot be shadowed, on both main loops.
#[test]
fn user_functions_named_like_kernel_locals() {
    let (sq, sk) = (70, 100);
    let bs = BlockSize { q: 64, k: 64 };
    for (dt, tile, mask_name, score_name) in [
        (DType::F32, T16, "acc", "p_lo"),
        (DType::F16, TileConfig::new(64, 64, 4, 2), "scale", "m_i"),
        (DType::Bf16, TileConfig::new(64, 64, 4, 1), "seq_k", "acc"),
    ] {
        let mut mask = example_mask_fn();
        mask.name = mask_name.into();
        let mut score = example_score_fn();
        score.name = score_name.into();
        let mut s = spec(
            dt,
            HeadDim::D64,
            Mask::Predicate(mask),
            ScoreMod::User(score),
        );
        s.sparse_block = bs;
        let mut rt = Rt {
            stride: 3,
            bias: vec![0.5, -1.0],
            decay: 0.03,
            ..Rt::default()
        };
        rt.lists = Some(build_block_lists(1, 1, sq, sk, bs, |_, _, p, j| {
            dilated(3, p, j)
        }));
        check(case(s, tile, (1, 2, 2), sq, sk, rt));
    }
}

#[test]
fn lm_infinite_bf16_d128() {
    let s = attnforge_codegen::catalog::find("flash_fwd_lm_infinite_d128_bf16").unwrap();
    let rt = Rt {
        global_tokens: 3,
        local_window: 20,
        dist_limit: 24,
        rope_theta: 10000.0,
        ..Rt::default()
    };
    check(case(
        s,
        TileConfig::new(16, 32, 2, 1),
        (1, 1, 1),
        90,
        100,
        rt,
    ));
}

// ---- tensor-core path: every variant in f16 and bf16, d = 64 / 128 (+ one d = 256), on all
// three schedules, against the f64 reference with the oracle of variants.md section 0 ----

mod tc_cases;

use attnforge_runtime::exec::Backend;

fn tc_suite(cases: Vec<tc_cases::TcCase>) {
    suite(
        cases,
        attnforge_codegen::tile::Mainloop::TensorCore,
        Arch::Sm80,
        &[
            "af_mma_m16n8k16_",
            "af_ldmatrix_x4_trans_at(",
            "af_cp_async_16(&sV",
        ],
        0x7c,
    );
}

/// Every case on `mainloop` (its source containing each of `marks`), under the three
/// schedules (seeded by `seed`), against the f64 reference; all failures reported together.
fn suite(
    cases: Vec<tc_cases::TcCase>,
    mainloop: attnforge_codegen::tile::Mainloop,
    arch: Arch,
    marks: &[&str],
    seed: u64,
) {
    let mut bad = Vec::new();
    for c in &cases {
        assert_eq!(
            attnforge_codegen::tile::Mainloop::select(&c.spec, &c.tile),
            mainloop,
            "{}",
            c.name
        );
        let src = emit(&c.spec, &c.tile, arch).unwrap().source;
        for m in marks {
            assert!(src.contains(m), "{}: no `{m}` in the source", c.name);
        }
        for sched in Schedule::standard(seed) {
            match tc_cases::run_case(c, &Backend::Sim(SimConfig::new(sched))) {
                Ok(r) => assert!(r.close.out.max_err.is_finite(), "{}", c.name),
                Err(e) => bad.push(format!("{} ({sched:?}): {e}", c.name)),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} runs failed:\n{}",
        bad.len(),
        cases.len() * 3,
        bad.join("\n")
    );
}

#[test]
fn tensor_core_f16_d64() {
    tc_suite(tc_cases::variants(DType::F16, HeadDim::D64));
}

#[test]
fn tensor_core_bf16_d64() {
    tc_suite(tc_cases::variants(DType::Bf16, HeadDim::D64));
}

#[test]
fn tensor_core_f16_d128() {
    tc_suite(tc_cases::variants(DType::F16, HeadDim::D128));
}

#[test]
fn tensor_core_bf16_d128() {
    tc_suite(tc_cases::variants(DType::Bf16, HeadDim::D128));
}

#[test]
fn tensor_core_d256_and_sq_gt_sk() {
    let mut v = tc_cases::extra(DType::F16);
    v.extend(tc_cases::extra(DType::Bf16));
    tc_suite(v);
}

#[test]
fn output_row_stride_padded_and_misaligned() {
    // o rows with padding (even stride): written through the stride, padding untouched
    let s = spec(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let mut c = case(
        s.clone(),
        TileConfig::new(64, 64, 4, 2),
        (1, 2, 2),
        50,
        50,
        Rt::default(),
    );
    c.o_pad = 6;
    check(c);
    // an odd o row stride would make the packed 32-bit O stores misaligned: the kernel's
    // precondition (af_require, a trap on a GPU) fails the launch with the field and the fix
    let mut c = case(
        s,
        TileConfig::new(64, 64, 4, 2),
        (1, 1, 1),
        20,
        20,
        Rt::default(),
    );
    c.o_pad = 1;
    let em = emit(&c.spec, &c.tile, Arch::Sm80).unwrap();
    let kern = SimKernel::build(&em.source, &em.name).unwrap();
    let x = vec![0.25; 20 * 64];
    let e = launch(&c, &kern, &x, &x, &x, Schedule::Forward)
        .expect_err("an odd o row stride must fail the launch");
    assert!(
        e.contains("o: rows must be 4-byte aligned") && e.contains("contiguous output"),
        "{e}"
    );
}

/// The mutant "K/V tile copy without its `kv < seq_k` guard" reads past the end of k and v
/// (rows of the last partial key tile of the last batch). The simulator's global bounds
/// check must fail the launch naming the buffer, on both mainloops: raw loads on the FMA
/// path (the guard region after the buffer), cp.async on the tensor-core path (the wrapper).
#[test]
fn unguarded_kv_copy_is_an_out_of_bounds_read() {
    let mutants = [
        (
            DType::F32,
            T16,
            "if (kv < blk.seq_k) {\n            const long long row = layout.kv_row(blk, kv);\n            kx = ",
            "if (true) {\n            const long long row = layout.kv_row(blk, kv);\n            kx = ",
        ),
        (
            DType::F16,
            TileConfig::new(64, 64, 4, 2),
            "if (kv < blk.seq_k && vec_kv) {",
            "if (vec_kv) {",
        ),
    ];
    for (dt, tile, guard, unguarded) in mutants {
        let s = spec(dt, HeadDim::D64, Mask::Causal, ScoreMod::None);
        // seq_k = 45 is not a multiple of the key tile: the last tile is partial
        let c = case(s, tile, (2, 2, 1), 20, 45, Rt::default());
        let em = emit(&c.spec, &c.tile, Arch::Sm80).unwrap();
        assert_eq!(
            em.source.matches(guard).count(),
            1,
            "{}: the K/V copy guard `{guard}` is not in the emitted source once",
            em.name
        );
        let x = |n: usize| (0..n).map(|i| (i % 7) as f64 * 0.125).collect::<Vec<_>>();
        let (q, kv) = (x(2 * 2 * 20 * 64), x(2 * 45 * 64));
        // the correct kernel passes, the mutant fails with an out-of-bounds read of k or v
        let kern = SimKernel::build(&em.source, &em.name).unwrap();
        launch(&c, &kern, &q, &kv, &kv, Schedule::Forward)
            .unwrap_or_else(|e| panic!("{}: {e}", em.name));
        let mutant = em.source.replacen(guard, unguarded, 1);
        let kern = SimKernel::build(&mutant, &em.name).unwrap();
        for schedule in [Schedule::Forward, Schedule::Random(11)] {
            let Err(e) = launch(&c, &kern, &q, &kv, &kv, schedule) else {
                panic!("{}: the unguarded K/V copy must fail the launch", em.name);
            };
            assert!(
                e.contains("out-of-bounds global")
                    && e.contains("past its end")
                    && (e.contains("argument 1 `k`") || e.contains("argument 2 `v`"))
                    && e.contains(" thread ("),
                "{}: {e}",
                em.name
            );
        }
    }
}

// ---- Hopper warpgroup MMA (sm_90a) on the simulator: the same suite on wgmma tiles ----

fn wgmma_suite(cases: Vec<tc_cases::TcCase>) {
    suite(
        cases,
        attnforge_codegen::tile::Mainloop::Wgmma,
        Arch::Sm90,
        &["af_fwd_wg<Tile>(", "begin af_fwd_wg.cuh"],
        0x3d,
    );
}

#[test]
fn wgmma_f16_d64() {
    wgmma_suite(tc_cases::wgmma_variants(DType::F16, HeadDim::D64));
}

#[test]
fn wgmma_bf16_d128() {
    wgmma_suite(tc_cases::wgmma_variants(DType::Bf16, HeadDim::D128));
}
