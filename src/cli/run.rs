//! `attnforge run`: one spec on q/k/v from `.npy`, out and lse to `.npy`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attnforge::codegen::spec::DType;
use attnforge::exec::{Backend, ExecError, Inputs, RunParams};
use attnforge::kernels::pipeline::{self, Pipeline, StaticKernel};
use attnforge::limits::{check_all, ProblemSizes};
use attnforge::npy::{read_i32, read_shape, read_tensor, write_staged, AnyTensor};
use attnforge::reference::{AttnOutput, Element, Precision};
use attnforge::sim::SimElem;
use attnforge::specfile::{self, AnySpecFile, DocSource, DynSpecFile, SpecFile};
use clap::{Args, ValueEnum};

use super::common::resolve_any;
use super::dynamic;
use super::variant::variant;
use super::CliError;

pub const AFTER_HELP: &str = "\
Inputs: q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D], C order, little endian: float32 ('<f4')
for f32 specs, float16 ('<f2') for f16 specs; for bf16 specs (NumPy has no bfloat16) uint16
raw bf16 bits ('<u2') or float32 rounded to bf16. Document ids: --doc, int32, [Sk] or [B, Sk].
NaN/Inf inputs are rejected, and so are inputs whose scores could overflow f32
(scale * max|q| * max|k| * D or max|v| * Sk above 1e36). Sizes are checked before reading
(q, k, v and out together at most 2^28 elements; raise with ATTNFORGE_MAX_ELEMENTS=N).
Outputs: out [B, Hq, Sq, D] and lse [B, Hq, Sq] as float32 (exact for f16/bf16 kernel
outputs; lse = -inf on empty rows). The output paths are checked before computing (a file
in a writable folder, not an input, --out != --lse); both are written to temporary files
and renamed into place only when both are written. A result with NaN/Inf rows (e.g. a user
score dividing by zero) is not written: exit 2 with the number of such rows and the first.
On a terminal, stderr shows the elapsed time while the kernel runs (ATTNFORGE_PROGRESS=
always|never overrides the terminal test).

Examples:
  attnforge run examples/specs/causal.toml --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy
  attnforge run examples/specs/document.toml --q q.npy --k k.npy --v v.npy --doc ids.npy --out o.npy --backend reference
  attnforge run flash_fwd_full_d128_bf16 --dtype bf16 --q q.npy --k k.npy --v v.npy --out o.npy
  attnforge run examples/specs/landmark_retrieval.toml --q q.npy --k k.npy --v v.npy --out o.npy
  attnforge run varlen.toml --q q.npy --k k.npy --v v.npy --cu-seqlens-q cq.npy --cu-seqlens-k ck.npy --out o.npy
  attnforge run paged.toml --q q.npy --k kc.npy --v vc.npy --cu-seqlens-q cq.npy --block-table bt.npy --seqlens-k sk.npy --out o.npy
  attnforge run examples/specs/hax.toml --q q2.npy --k k2.npy --v x.npy --hyperplanes hp.npy --ks ks.npy --out o.npy

Backward (variants.md section 12, static specs): --backward with --do dO.npy (out's shape,
the spec's dtype, the rules of --q) and optionally --dlse (float32 [B, Hq, Sq]) writes float32
--dq [B, Hq, Sq, D], --dk and --dv [B, Hkv, Sk, D], --dparams the score parameter's gradient
(softcap [1], ALiBi [Hq]) and, when given, --out/--lse of the forward it was taken at; the
reference backend is the f64 backward. All outputs are staged and written only together.
Variants without backward kernels (LM-Infinite, user score functions, the pipelines) exit 2.
  attnforge run flash_fwd_local_softcap_d64_f16 --backward --q q.npy --k k.npy --v v.npy --do do.npy --dq dq.npy --dk dk.npy --dv dv.npy --dparams dcap.npy

Data-dependent pipelines: landmark, cca and topk take q/k/v as above; HAX takes q2/k2/x as
--q/--k/--v plus --hyperplanes and --ks (f32; head extent 1 = shared, Hq = per query head,
Hkv = per kv head). lse_merge is not supported by `run` yet (use `attnforge check`).
recycled (Recycled Attention, decoding) takes q [B, Hq, T, D] (rotated queries of T decode
steps), --q-raw (the same queries un-rotated, same shape), k, v [B, Hkv, Sk, D] (the cache);
prints each step's kind per batch element and keys read, writes out [B, Hq, T, D] and
lse [B, Hq, T] (backends sim and reference).
  attnforge run examples/specs/recycled.toml --q q.npy --q-raw q_raw.npy --k k.npy --v v.npy --out o.npy
LongHeads: a prefill (Sq == Sk) writes the chunk summaries with --r-out r.npy (f32
[B, Hq, floor(Sk / chunk), D]); decoding rows (Sq < Sk) read them with --r r.npy.

Serving layouts (a spec with layout = \"varlen\" | \"paged\" | \"decode\" | \"decode_varlen\",
docs/serving.md; backends sim, reference and cuda): q packed [Tq, Hq, D] with --cu-seqlens-q [B + 1];
varlen k, v [Tk, Hkv, D] with --cu-seqlens-k [B + 1]; paged k, v caches [num_pages, page_size,
Hkv, D] with --block-table [B, max_pages] and --seqlens-k [B] (int32 .npy); --doc ids packed
like the keys [Tk]. Decode (1..16 tokens per sequence; decode: paged keys, decode_varlen:
packed keys) takes --num-splits (default: chosen from the problem and the device). Writes
out [Tq, Hq, D] and lse [Hq, Tq]. The layout arrays are checked before any launch.";

/// Backend of `run`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RunBackend {
    /// The f64 reference (no kernel).
    Reference,
    /// The CPU simulator running the generated CUDA.
    Sim,
    /// A GPU (device 0).
    Cuda,
}

/// Element type flag.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DtypeArg {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16 (input as '<u2' raw bits or '<f4').
    Bf16,
}

/// Options of `attnforge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Catalog name or spec file.
    pub(super) spec: String,
    /// Queries (.npy).
    #[arg(long)]
    pub(super) q: PathBuf,
    /// Keys (.npy).
    #[arg(long)]
    pub(super) k: PathBuf,
    /// Values (.npy).
    #[arg(long)]
    pub(super) v: PathBuf,
    /// Document ids (.npy, int32), replacing the spec file's.
    #[arg(long)]
    pub(super) doc: Option<PathBuf>,
    /// Output file for `out` (required, except with --backward).
    #[arg(long, required_unless_present = "backward")]
    pub(super) out: Option<PathBuf>,
    /// Output file for `lse` (optional).
    #[arg(long)]
    pub(super) lse: Option<PathBuf>,
    /// Recycled only: the un-rotated queries of the decode steps (.npy, q's shape
    /// `[B, Hq, T, D]`), for the similarity schedule.
    #[arg(long)]
    pub(super) q_raw: Option<PathBuf>,
    /// HAX only: hyperplanes, f32 [1|B, H', N, hash_bits] (H' = 1, Hq or Hkv).
    #[arg(long)]
    pub(super) hyperplanes: Option<PathBuf>,
    /// HAX only: key-selection scores, f32 [1|B, H', S, 1] (H' = 1, Hq or Hkv).
    #[arg(long)]
    pub(super) ks: Option<PathBuf>,
    /// LongHeads decoding only: the chunk summaries r of a prefill, f32 [B, Hq, n_chunks, D].
    #[arg(long)]
    pub(super) r: Option<PathBuf>,
    /// LongHeads prefill only: write the chunk summaries r here (f32 [B, Hq, floor(Sk / chunk), D]).
    #[arg(long)]
    pub(super) r_out: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "sim")]
    pub(super) backend: RunBackend,
    /// Element type of the kernel (default: the spec's); must agree with the spec's dtype.
    #[arg(long, value_enum)]
    pub(super) dtype: Option<DtypeArg>,
    /// Run the backward (variants.md section 12): read --do (and --dlse), write --dq, --dk,
    /// --dv (and --dparams); --out/--lse then receive the forward it was taken at.
    #[arg(long)]
    pub(super) backward: bool,
    #[command(flatten)]
    pub(super) grads: super::run_backward::GradArgs,
    /// Serving layouts: query offsets `[B + 1]` (.npy, int32); q is packed `[Tq, Hq, D]`.
    #[arg(long)]
    pub(super) cu_seqlens_q: Option<PathBuf>,
    /// Varlen: key offsets `[B + 1]` (.npy, int32); k, v are packed `[Tk, Hkv, D]`.
    #[arg(long)]
    pub(super) cu_seqlens_k: Option<PathBuf>,
    /// Paged: `[B, max_pages]` page indices (.npy, int32); k, v are caches
    /// `[num_pages, page_size, Hkv, D]`.
    #[arg(long)]
    pub(super) block_table: Option<PathBuf>,
    /// Paged: key lengths `[B]` (.npy, int32).
    #[arg(long)]
    pub(super) seqlens_k: Option<PathBuf>,
    /// Decode: key splits per sequence (default: chosen from the problem and the device,
    /// `attnforge_codegen::serving::decode_splits`).
    #[arg(long)]
    pub(super) num_splits: Option<usize>,
    #[command(flatten)]
    pub(super) stats: super::run_stats::StatsArgs,
    /// Run with the tile the tuner picked (`attnforge tune --out DIR`; default `reports`):
    /// `<name>.json` (forward) or `<name>_bwd.json` (--backward) of that folder; a kernel it
    /// does not hold keeps the default tile, with a notice.
    #[arg(long, value_name = "REPORT_DIR", num_args = 0..=1, require_equals = true,
          default_missing_value = super::tuned::DEFAULT_DIR)]
    pub(super) tuned: Option<PathBuf>,
}

/// The one way `run` executes a variant of either kind: the f64 reference, or its
/// kernel(s) on the simulator or GPU 0.
pub(super) fn execute<P: Pipeline, T: Element + SimElem>(
    p: &P,
    x: &P::Inputs<T>,
    backend: RunBackend,
) -> Result<AttnOutput, ExecError> {
    match backend {
        RunBackend::Reference => pipeline::reference(p, x, Precision::F64),
        RunBackend::Sim => Ok(pipeline::run(p, x, &Backend::sim())?.output),
        RunBackend::Cuda => Ok(pipeline::run(p, x, &Backend::Cuda(0))?.output),
    }
}

fn go<T: Element + SimElem>(
    sf: &SpecFile,
    x: Inputs<T>,
    rp: &RunParams,
    backend: RunBackend,
) -> Result<AttnOutput, ExecError> {
    let tile = sf.tile().map_err(|e| ExecError::Input {
        field: e.field.clone(),
        message: e.message.clone(),
        fix: e.fix.clone(),
    })?;
    let kernel = StaticKernel {
        spec: &sf.spec,
        tile: &tile,
        params: rp,
    };
    execute(&kernel, &x, backend)
}

fn want_dtype(a: &RunArgs, have: DType) -> Result<(), CliError> {
    if let Some(d) = a.dtype {
        let want = match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::Bf16,
        };
        if want != have {
            return Err(CliError::input(format!(
                "--dtype {} but the spec `{}` is {}\n  fix: drop --dtype or pick a spec of that dtype",
                want.short(),
                a.spec,
                have.short()
            )));
        }
    }
    Ok(())
}

/// `attnforge run`: one path for every spec file; the kind-specific part is
/// `Variant::run` (`run_static` or `run_dynamic`).
pub fn run(a: RunArgs) -> Result<(), CliError> {
    let mut any = resolve_any(&a.spec)?;
    if let Some(dir) = &a.tuned {
        let files = std::slice::from_mut(&mut any);
        super::tuned::apply_all(dir, files, |_| (!a.backward, a.backward))?;
    }
    check_output_paths(&a, &any)?;
    check_input_sizes(&a)?;
    let v = variant(&any);
    want_dtype(&a, v.dtype())?;
    if a.backward {
        if let AnySpecFile::Static(sf) = &any {
            if !sf.spec.layout.is_dense() {
                return Err(CliError::input(format!(
                    "--backward: `{}` has layout `{}`; the backward kernels read the dense layout only\n  fix: drop --backward, or use the dense spec",
                    a.spec,
                    sf.spec.layout.tag()
                )));
            }
        }
        return super::run_backward::run(&a, &any);
    }
    if let AnySpecFile::Static(sf) = &any {
        if !sf.spec.layout.is_dense() {
            return super::run_serving::run(sf, &a);
        }
        if a.stats.any() {
            return super::run_stats::run(sf, &a);
        }
    }
    if let Some((flag, _)) = a.stats.outputs().first() {
        return Err(CliError::input(format!(
            "{flag}: `{}` is a data-dependent pipeline; the statistics outputs belong to the static kernels\n  fix: drop {flag}",
            a.spec
        )));
    }
    let out = v.run(&a)?;
    write_outputs(&a, &v.name(), &out)
}

/// A data-dependent pipeline on the `.npy` inputs (HAX: also `--hyperplanes`, `--ks`).
pub(super) fn run_dynamic(df: &DynSpecFile, a: &RunArgs) -> Result<AttnOutput, CliError> {
    if a.doc.is_some() {
        return Err(CliError::input(format!(
            "{}: --doc is for the document masks; `{}` takes no document ids\n  fix: remove --doc",
            a.spec,
            df.spec.canonical_name()
        )));
    }
    let files = dynamic::RunFiles {
        q: &a.q,
        k: &a.k,
        v: &a.v,
        hyperplanes: a.hyperplanes.as_deref(),
        ks: a.ks.as_deref(),
        r: a.r.as_deref(),
        r_out: a.r_out.as_deref(),
    };
    let recycled = super::recycled::is_recycled(&df.spec);
    if a.q_raw.is_some() && !recycled {
        return Err(CliError::input(format!(
            "{}: --q-raw is the recycled family's input; `{}` does not take it\n  fix: remove --q-raw",
            a.spec,
            df.spec.canonical_name()
        )));
    }
    let progress = Progress::start(format!(
        "{}: running on the {}",
        df.spec.canonical_name(),
        backend_name(a.backend)
    ));
    let out = if recycled {
        super::recycled::run(df, &a.spec, &files, a.q_raw.as_deref(), a.backend)
    } else {
        dynamic::run(df, &a.spec, &files, a.backend)
    };
    progress.finish(out.is_ok());
    out
}

/// A static kernel on the `.npy` inputs (and `--doc` for the document masks).
pub(super) fn run_static(sf: &SpecFile, a: &RunArgs) -> Result<AttnOutput, CliError> {
    let (q, k, v, rp) = static_inputs(sf, a)?;
    let progress = Progress::start(format!(
        "{}: running on the {}",
        sf.spec.canonical_name(),
        backend_name(a.backend)
    ));
    let res = match (q, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v)) => {
            go::<f32>(sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v)) => {
            go(sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => {
            go(sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    progress.finish(res.is_ok());
    // A user function that failed on the host makes every result meaningless, whatever the
    // backend reported.
    if let Some(e) = sf.user_fn_failure() {
        return Err(CliError::input(e.to_string()));
    }
    res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: {e}", a.spec)),
    })
}

/// q, k, v of a static spec (the spec's dtype, magnitudes checked) and its run parameters
/// (`--doc` overriding the file's document ids).
pub(super) fn static_inputs(
    sf: &SpecFile,
    a: &RunArgs,
) -> Result<(AnyTensor, AnyTensor, AnyTensor, RunParams), CliError> {
    if a.hyperplanes.is_some() || a.ks.is_some() {
        return Err(CliError::input(format!(
            "{}: --hyperplanes / --ks are HAX inputs; `{}` does not take them\n  fix: remove them",
            a.spec,
            sf.spec.canonical_name()
        )));
    }
    if a.r.is_some() || a.r_out.is_some() {
        return Err(CliError::input(format!(
            "{}: --r / --r-out are LongHeads summaries; `{}` does not take them\n  fix: remove them",
            a.spec,
            sf.spec.canonical_name()
        )));
    }
    let q = read_tensor(&a.q, sf.spec.dtype).map_err(CliError::input)?;
    let k = read_tensor(&a.k, sf.spec.dtype).map_err(CliError::input)?;
    let v = read_tensor(&a.v, sf.spec.dtype).map_err(CliError::input)?;
    let doc = match &a.doc {
        Some(p) => Some(read_i32(p).map_err(CliError::input)?),
        None => None,
    };
    let mut rp = sf.run_params(k.shape().seq, doc).map_err(CliError::input)?;
    specfile::catalog_twins(sf, &mut rp);
    let scale = sf
        .spec
        .scale
        .map_or(1.0 / (sf.spec.head_dim.get() as f64).sqrt(), f64::from);
    check_magnitudes(&a.spec, [(&a.q, &q), (&a.k, &k), (&a.v, &v)], scale)?;
    Ok((q, k, v, rp))
}

pub(super) fn backend_name(b: RunBackend) -> &'static str {
    match b {
        RunBackend::Reference => "f64 reference",
        RunBackend::Sim => "simulator",
        RunBackend::Cuda => "GPU",
    }
}

/// Largest scores and accumulators the inputs may produce (f32::MAX is 3.4e38; the margin
/// covers the log2(e) pre-scaling and score modifications).
pub const MAX_SCORE_BOUND: f64 = 1e36;

fn max_abs(t: &AnyTensor) -> f64 {
    fn m<T: Element>(d: &[T]) -> f64 {
        d.iter().fold(0.0, |a, &x| a.max(x.to_f64().abs()))
    }
    match t {
        AnyTensor::F32(t) => m(&t.data),
        AnyTensor::F16(t) => m(&t.data),
        AnyTensor::Bf16(t) => m(&t.data),
    }
}

/// Reject inputs whose scores (`scale * q.k`, at most `scale * max|q| * max|k| * D`) or
/// value accumulators (at most `max|v| * Sk`) could overflow f32 in a kernel: the f64
/// reference would stay finite and the kernel would not.
pub(super) fn check_magnitudes(
    label: &str,
    [(qp, q), (kp, k), (vp, v)]: [(&Path, &AnyTensor); 3],
    scale: f64,
) -> Result<(), CliError> {
    let (mq, mk, mv) = (max_abs(q), max_abs(k), max_abs(v));
    let dim = q.shape().dim as f64;
    let score = scale.abs() * mq * mk * dim;
    if score > MAX_SCORE_BOUND {
        return Err(CliError::input(format!(
            "{label}: scores can reach scale * max|q| * max|k| * D = {:.3e} * {mq:.3e} * {mk:.3e} * {dim} = {score:.3e}, above the limit {MAX_SCORE_BOUND:e} (the kernels compute scores in f32, max 3.4e38)\n  fix: scale {} and {} down (attention is unchanged by scaling q by c and the spec's scale by 1/c)",
            scale.abs(),
            qp.display(),
            kp.display()
        )));
    }
    let acc = mv * k.shape().seq as f64;
    if acc > MAX_SCORE_BOUND {
        return Err(CliError::input(format!(
            "{label}: {}: the output accumulator can reach max|v| * Sk = {mv:.3e} * {} = {acc:.3e}, above the limit {MAX_SCORE_BOUND:e} (f32 accumulation)\n  fix: scale v down (the output scales with it)",
            vp.display(),
            k.shape().seq
        )));
    }
    Ok(())
}

/// A spinner line on stderr with the elapsed time, while a kernel runs: shown when stderr is
/// a terminal (`ATTNFORGE_PROGRESS=always` or `never` overrides the test).
pub(super) struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    message: String,
    ok: bool,
}

impl Progress {
    fn enabled() -> bool {
        match std::env::var("ATTNFORGE_PROGRESS").as_deref() {
            Ok("always") => true,
            Ok("never") => false,
            _ => std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn start(message: String) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let draw = move |frame: usize, message: &str| {
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[2K{} {message}: {} s elapsed",
                ['|', '/', '-', '\\'][frame % 4],
                started.elapsed().as_secs()
            );
            let _ = e.flush();
        };
        let thread = Self::enabled().then(|| {
            // The first line is drawn before the work starts, however short it is.
            draw(0, &message);
            let (stop, message) = (stop.clone(), message.clone());
            std::thread::spawn(move || {
                for frame in 1.. {
                    for _ in 0..5 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    draw(frame, &message);
                }
            })
        });
        Progress {
            stop,
            thread,
            started,
            message,
            ok: false,
        }
    }

    /// Stop the spinner: `done in N s` after a success, a cleared line after a failure (the
    /// error follows).
    pub(super) fn finish(mut self, ok: bool) {
        self.ok = ok;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            if self.ok {
                eprintln!(
                    "\r\x1b[2K{}: done in {:.1} s",
                    self.message,
                    self.started.elapsed().as_secs_f64()
                );
            } else {
                eprint!("\r\x1b[2K");
            }
        }
    }
}

/// What identifies a file: its canonical path (an output that does not exist yet: the
/// canonical folder plus the name) and, when it exists, device and inode (hard links).
#[derive(Debug, PartialEq, Eq)]
struct FileId {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl FileId {
    fn same(&self, o: &FileId) -> bool {
        self.path == o.path || (self.inode.is_some() && self.inode == o.inode)
    }
}

fn inode(p: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

fn input_id(p: &Path) -> Option<FileId> {
    Some(FileId {
        path: std::fs::canonicalize(p).ok()?,
        inode: inode(p),
    })
}

/// Check one output path before any work: a file name in an existing, writable folder, not a
/// directory. Returns its identity.
fn output_id(flag: &str, p: &Path) -> Result<FileId, CliError> {
    let bad = |m: String, fix: &str| {
        CliError::input(format!("{flag} {}: {m}\n  fix: {fix}", p.display()))
    };
    if p.is_dir() {
        return Err(bad(
            "is a directory".into(),
            "give a file name, e.g. DIR/out.npy",
        ));
    }
    let Some(name) = p.file_name() else {
        return Err(bad(
            "has no file name".into(),
            "give a file name, e.g. out.npy",
        ));
    };
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(bad(
            format!("the folder {} does not exist", dir.display()),
            "create the folder first or write elsewhere",
        ));
    }
    let probe = dir.join(format!(
        ".{}.probe-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(bad(
                format!("cannot create a file in {}: {e}", dir.display()),
                "write to a folder you can write to",
            ))
        }
    }
    let canon_dir = std::fs::canonicalize(dir).map_err(|e| {
        bad(
            format!("cannot resolve the folder: {e}"),
            "write to an existing folder",
        )
    })?;
    // An existing output (or a symlink) resolves to its target.
    let path = std::fs::canonicalize(p).unwrap_or_else(|_| canon_dir.join(name));
    Ok(FileId {
        path,
        inode: inode(p),
    })
}

/// Refuse outputs that are inputs (q, k, v, doc, hyperplanes, ks, dO, dlse, the spec file,
/// its doc file) or each other, and unwritable outputs, before reading or computing anything.
fn check_output_paths(a: &RunArgs, any: &AnySpecFile) -> Result<(), CliError> {
    let mut inputs: Vec<(String, PathBuf)> = vec![
        ("the input --q".into(), a.q.clone()),
        ("the input --k".into(), a.k.clone()),
        ("the input --v".into(), a.v.clone()),
    ];
    for (flag, p) in [
        ("--doc", &a.doc),
        ("--hyperplanes", &a.hyperplanes),
        ("--ks", &a.ks),
        ("--r", &a.r),
        ("--do", &a.grads.dout),
        ("--dlse", &a.grads.dlse),
    ] {
        if let Some(p) = p {
            inputs.push((format!("the input {flag}"), p.clone()));
        }
    }
    let spec_path = match any {
        AnySpecFile::Static(sf) => sf.path.clone(),
        AnySpecFile::Dynamic(df) => df.path.clone(),
    };
    if let Some(p) = spec_path {
        inputs.push(("the spec file".into(), p));
    }
    if let AnySpecFile::Static(sf) = any {
        if let Some(DocSource::File(p)) = &sf.doc {
            inputs.push((
                "the document ids (params.doc_file) of the spec file".into(),
                p.clone(),
            ));
        }
    }
    let mut outputs = Vec::new();
    for (flag, p) in [
        ("--out", &a.out),
        ("--lse", &a.lse),
        ("--r-out", &a.r_out),
        ("--dq", &a.grads.dq),
        ("--dk", &a.grads.dk),
        ("--dv", &a.grads.dv),
        ("--dparams", &a.grads.dparams),
        ("--key-mass", &a.stats.key_mass),
        ("--key-score", &a.stats.key_score),
        ("--top-keys", &a.stats.top_keys),
    ] {
        if let Some(p) = p {
            outputs.push((flag, p, output_id(flag, p)?));
        }
    }
    for (oflag, op, oid) in &outputs {
        for (iflag, ip) in &inputs {
            if input_id(ip).is_some_and(|iid| iid.same(oid)) {
                return Err(CliError::input(format!(
                    "{oflag} {} is the same file as {iflag} ({}): writing it would destroy the input\n  fix: write {oflag} to another file",
                    op.display(),
                    ip.display()
                )));
            }
        }
    }
    for (i, (f1, p1, id1)) in outputs.iter().enumerate() {
        for (f2, p2, id2) in &outputs[i + 1..] {
            if id1.same(id2) {
                return Err(CliError::input(format!(
                    "{f1} {} and {f2} {} are the same file: {} would overwrite {}\n  fix: give {f2} another file name",
                    p1.display(),
                    p2.display(),
                    &f2[2..],
                    &f1[2..]
                )));
            }
        }
    }
    Ok(())
}

/// The sizes in the q and k headers against the limits (attnforge::limits), before any data
/// is read.
fn check_input_sizes(a: &RunArgs) -> Result<(), CliError> {
    let qs = read_shape(&a.q).map_err(CliError::input)?;
    let ks = read_shape(&a.k).map_err(CliError::input)?;
    read_shape(&a.v).map_err(CliError::input)?;
    let (&[b, hq, sq, d], &[_, hkv, sk, _]) = (&qs[..], &ks[..]) else {
        // read_tensor reports the rank.
        return Ok(());
    };
    let q_seq = format!("--q {} (dimension 2, seq_q)", a.q.display());
    let k_seq = format!("--k {} (dimension 2, seq_k)", a.k.display());
    let q_batch = format!("--q {} (dimension 0, batch)", a.q.display());
    let q_heads = format!("--q {} (dimension 1, heads)", a.q.display());
    let k_heads = format!("--k {} (dimension 1, heads)", a.k.display());
    let sizes = ProblemSizes {
        fields: [
            (&q_batch, b),
            (&q_heads, hq),
            (&k_heads, hkv),
            (&q_seq, sq),
            (&k_seq, sk),
        ],
        dim: d,
    };
    check_all(&sizes)
        .map_err(|e| CliError::input(format!("{}: {}\n  fix: {}", e.field, e.message, e.fix)))
}

/// `(count, first)` of the rows with a NaN/Inf output or a NaN/+Inf lse (-inf is an empty row).
fn non_finite_rows(out: &AttnOutput) -> (usize, Option<usize>) {
    let d = out.shape.dim.max(1);
    let mut count = 0;
    let mut first = None;
    for (r, l) in out.lse.iter().enumerate() {
        let row = out.out.get(r * d..(r + 1) * d).unwrap_or(&[]);
        if l.is_nan() || *l == f64::INFINITY || row.iter().any(|x| !x.is_finite()) {
            count += 1;
            first.get_or_insert(r);
        }
    }
    (count, first)
}

pub(super) fn write_outputs(a: &RunArgs, name: &str, out: &AttnOutput) -> Result<(), CliError> {
    let (b, h, s, d) = (
        out.shape.batch as u64,
        out.shape.heads as u64,
        out.shape.seq as u64,
        out.shape.dim as u64,
    );
    if let (n, Some(r)) = non_finite_rows(out) {
        let (hs, ss) = (out.shape.heads, out.shape.seq.max(1));
        return Err(CliError::input(format!(
            "{}: {name}: {n} of {} output rows are NaN or Inf (first: batch {}, head {}, query row {}); nothing was written\n  fix: a user score or mask function, or the inputs, give non-finite scores (e.g. a division by zero): make every score finite",
            a.spec,
            out.lse.len(),
            r / (hs * ss),
            (r / ss) % hs.max(1),
            r % ss
        )));
    }
    let o: Vec<f32> = out.out.iter().map(|&x| x as f32).collect();
    let l: Vec<f32> = out.lse.iter().map(|&x| x as f32).collect();
    // Both go to temporaries first and are renamed only when both are written, so that a
    // failure leaves the previous files as they were.
    let out_path = a.out.as_ref().ok_or_else(|| {
        CliError::input("--out is missing\n  fix: give --out o.npy (the output of the forward)")
    })?;
    let so = write_staged(out_path, &[b, h, s, d], &o).map_err(CliError::input)?;
    let sl = match &a.lse {
        Some(lp) => Some(write_staged(lp, &[b, h, s], &l).map_err(CliError::input)?),
        None => None,
    };
    so.commit().map_err(CliError::input)?;
    if let Some(sl) = sl {
        sl.commit().map_err(CliError::input)?;
    }
    println!(
        "{}: wrote {} [{b}, {h}, {s}, {d}]{}",
        name,
        out_path.display(),
        a.lse.as_ref().map_or(String::new(), |p| format!(
            " and {} [{b}, {h}, {s}]",
            p.display()
        ))
    );
    Ok(())
}
