//! `cargo xtask anchors`: the side-by-side of attnforge's main loops with FlashAttention-2's
//! and Triton's, in machine code, regenerated into `docs/anchors.md` (issue 17, item 1).
//! Not part of CI: it downloads about 1 GB and compiles for minutes.
//!
//! 1. Installs into `.toolchain/anchors/` (each piece once, checked by a stamp):
//!    - `cuda13/`: a full CUDA nvcc from PyPI ([`CUDA_WHEELS`], `pip install --target`);
//!    - `src/flash_attn-<v>/`: the flash-attn sdist ([`FLASH_ATTN`]), fetched from the package
//!      index's JSON API by a few lines of Python (`pip download` cannot: its setup.py imports
//!      torch while generating metadata) and checked against the index's sha256;
//!    - `triton-venv/`: a virtual environment with [`TRITON`].
//! 2. Compiles, into `target/anchors/`: FA2's forward, backward and split-KV decode kernels
//!    through our translation units ([`FA2_UNITS`]: `xtask/anchors/fa2_{fwd,bwd,splitkv}.cu`,
//!    ATen stubs in `xtask/anchors/stubs/`) for sm_80 and sm_90 with FA2's own nvcc flags
//!    ([`FA2_NVCC_FLAGS`]), one nvcc at a time, skipping a cubin whose command line and unit
//!    are unchanged ([`compile_key`]); Triton's fused-attention forward
//!    (`xtask/anchors/triton_fwd.py`) for `GPUTarget("cuda", 80|90, 32)`.
//! 3. Runs `cargo run -p attnforge-runtime --example anchors`, which compiles our kernels
//!    through NVRTC, analyses all SASS with `attnforge_runtime::main_loops` and writes
//!    `docs/anchors.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, check_pip, err, run_step, setup, workspace_root, Result, TaskError};

/// CUDA 13.0 nvcc and the pieces it needs (front end, NVVM, runtime and CCCL headers), pinned
/// to one release. PyPI has no full CUDA 12 nvcc (`nvidia-cuda-nvcc-cu12` ships ptxas only).
pub const CUDA_WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];

/// The flash-attn sdist: `(package, version)`. It bundles its CUTLASS.
pub const FLASH_ATTN: (&str, &str) = ("flash-attn", "2.8.3.post2");

/// Triton from PyPI (compiles for a `GPUTarget` without a GPU).
pub const TRITON: &str = "triton==3.9.0";

/// nvcc flags of FA2's setup.py (`nvcc_flags`), plus `-cubin` and the resource report.
pub const FA2_NVCC_FLAGS: &[&str] = &[
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "--ptxas-options=-v",
    "-cubin",
];

/// Architectures compiled: FA2 runs its sm80 path on Hopper too.
pub const ARCHS: &[u32] = &[80, 90];

const STAMP: &str = ".anchors-stamp";

/// The anchor tools folder.
fn anchors_dir() -> PathBuf {
    workspace_root().join(".toolchain").join("anchors")
}

/// Where the compiled anchors and the version notes go.
fn out_dir() -> PathBuf {
    workspace_root().join("target").join("anchors")
}

/// Python that downloads one sdist from the package index's JSON API (PEP 691), honouring
/// `PIP_INDEX_URL`, and checks its sha256. argv: package, version, destination folder.
const FETCH_SDIST_PY: &str = r#"
import hashlib, json, os, sys, urllib.request
name, version, dest = sys.argv[1], sys.argv[2], sys.argv[3]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
req = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
try:
    files = json.load(urllib.request.urlopen(req, timeout=120))["files"]
except Exception as e:
    sys.exit(f"cannot read {index}/{name}/ (PEP 691 JSON): {e}")
want = [f for f in files if f["filename"].endswith(f"-{version}.tar.gz")]
if not want:
    sys.exit(f"the index {index} has no sdist of {name}=={version}")
f = want[0]
try:
    data = urllib.request.urlopen(f["url"], timeout=900).read()
except Exception as e:
    sys.exit(f"cannot download {f['url']}: {e}")
if hashlib.sha256(data).hexdigest() != f["hashes"]["sha256"]:
    sys.exit(f"sha256 mismatch for {f['filename']}")
os.makedirs(dest, exist_ok=True)
with open(os.path.join(dest, f["filename"]), "wb") as out:
    out.write(data)
print(os.path.join(dest, f["filename"]))
"#;

/// One installable piece of `.toolchain/anchors`: its folder, what it pins (the stamp) and a
/// file that must exist once installed.
struct Piece {
    folder: &'static str,
    pins: String,
    required: String,
}

fn pieces() -> Vec<Piece> {
    vec![
        Piece {
            folder: "cuda13",
            pins: CUDA_WHEELS.join("\n"),
            required: "nvidia/cu13/bin/nvcc".to_owned(),
        },
        Piece {
            folder: "src",
            pins: format!("{}=={}", FLASH_ATTN.0, FLASH_ATTN.1),
            required: format!(
                "flash_attn-{}/csrc/flash_attn/src/flash_fwd_kernel.h",
                FLASH_ATTN.1
            ),
        },
        Piece {
            folder: "triton-venv",
            pins: TRITON.to_owned(),
            required: "bin/python".to_owned(),
        },
    ]
}

/// The folder of the unpacked flash-attn sources.
fn fa2_source() -> PathBuf {
    anchors_dir()
        .join("src")
        .join(format!("flash_attn-{}", FLASH_ATTN.1))
}

/// `dir` holds `piece` as pinned now.
fn installed(dir: &Path, piece: &Piece) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == piece.pins.trim())
        && dir.join(&piece.required).exists()
}

fn run_ok(label: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| TaskError(format!("cannot start {label}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        err(format!("{label} failed ({status})"))
    }
}

/// Installs `piece` into `.toolchain/anchors/<folder>` unless its stamp matches; a failed
/// install leaves no stamp (the next run retries).
fn install(piece: &Piece) -> Result<()> {
    let dir = anchors_dir().join(piece.folder);
    if installed(&dir, piece) {
        println!("xtask: {} up to date ({})", piece.folder, dir.display());
        return Ok(());
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .map_err(|e| TaskError(format!("cannot create {}: {e}", dir.display())))?;
    println!(
        "xtask: installing {} into {}",
        piece.pins.replace('\n', " "),
        dir.display()
    );
    let network = "check network access to the Python package index (PyPI) from this machine";
    match piece.folder {
        "cuda13" => run_ok(
            &format!("pip install {} ({network})", CUDA_WHEELS.join(" ")),
            Command::new("python3")
                .args(["-m", "pip", "install", "--no-deps", "--no-compile"])
                .args(["--disable-pip-version-check", "--target"])
                .arg(&dir)
                .args(CUDA_WHEELS),
        )?,
        "src" => {
            let sdist = anchors_dir().join("sdist");
            let (name, version) = FLASH_ATTN;
            let out = Command::new("python3")
                .args(["-c", FETCH_SDIST_PY, name, version])
                .arg(&sdist)
                .output()
                .map_err(|e| TaskError(format!("cannot run python3: {e}")))?;
            if !out.status.success() {
                return err(format!(
                    "downloading the {name}=={version} sdist failed ({network}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let tarball = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            run_ok(
                &format!("tar xzf {tarball}"),
                Command::new("tar")
                    .arg("xzf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&dir),
            )?;
        }
        _ => {
            run_ok(
                "python3 -m venv",
                Command::new("python3").args(["-m", "venv"]).arg(&dir),
            )?;
            run_ok(
                &format!("pip install {TRITON} ({network})"),
                Command::new(dir.join("bin/python"))
                    .args(["-m", "pip", "install", "--no-compile"])
                    .args(["--disable-pip-version-check", TRITON]),
            )?;
        }
    }
    fix_exec_bits(&dir)?;
    fs::write(dir.join(STAMP), &piece.pins)
        .map_err(|e| TaskError(format!("cannot write the stamp in {}: {e}", dir.display())))?;
    if !installed(&dir, piece) {
        return err(format!(
            "{} installed but {} is missing: the package layout changed; update \
             xtask/src/anchors.rs",
            piece.folder, piece.required
        ));
    }
    Ok(())
}

/// pip drops the exec bit of the CUDA wheels' tools.
#[cfg(unix)]
fn fix_exec_bits(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["nvidia/cu13/bin", "nvidia/cu13/nvvm/bin"] {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() && meta.permissions().mode() & 0o111 == 0 {
                    let mut p = meta.permissions();
                    p.set_mode(p.mode() | 0o755);
                    fs::set_permissions(&path, p)
                        .map_err(|e| TaskError(format!("cannot chmod {}: {e}", path.display())))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn fix_exec_bits(_dir: &Path) -> Result<()> {
    Ok(())
}

/// The nvcc command line compiling one of FA2's units ([`FA2_UNITS`]) for `sm`.
pub fn fa2_nvcc_args(fa2: &Path, stubs: &Path, unit: &Path, sm: u32, out: &Path) -> Vec<String> {
    let csrc = fa2.join("csrc");
    let mut args: Vec<String> = FA2_NVCC_FLAGS.iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("-gencode=arch=compute_{sm},code=sm_{sm}"));
    for inc in [
        csrc.join("flash_attn").join("src"),
        csrc.join("cutlass").join("include"),
        stubs.to_path_buf(),
    ] {
        args.push(format!("-I{}", inc.display()));
    }
    args.push("-o".to_owned());
    args.push(out.display().to_string());
    args.push(unit.display().to_string());
    args
}

fn nvcc_path() -> PathBuf {
    anchors_dir().join("cuda13/nvidia/cu13/bin/nvcc")
}

/// FA2's translation units of ours: (output stem, unit in `xtask/anchors/`, what it holds).
/// Each is compiled for every [`ARCHS`] into `<stem>_sm<arch>.cubin` with its ptxas log
/// `<stem>_sm<arch>.log`.
pub const FA2_UNITS: &[(&str, &str, &str)] = &[
    ("fa2", "fa2_fwd.cu", "forward"),
    (
        "fa2_bwd",
        "fa2_bwd.cu",
        "backward dQ/dK/dV (the longest: minutes)",
    ),
    (
        "fa2_splitkv",
        "fa2_splitkv.cu",
        "split-KV decode and combine",
    ),
];

/// What a compiled unit depends on: the nvcc command line and the unit's text. A cubin whose
/// `.key` file holds the same text is up to date (the FA2 sources are pinned by their stamp,
/// the stubs change with the unit's commit).
pub fn compile_key(args: &[String], unit_text: &str) -> String {
    format!("{}\n{unit_text}", args.join(" "))
}

fn compile_fa2(out: &Path) -> Result<()> {
    let xt = workspace_root().join("xtask").join("anchors");
    for &(stem, file, what) in FA2_UNITS {
        let unit = xt.join(file);
        let text = fs::read_to_string(&unit)
            .map_err(|e| TaskError(format!("cannot read {}: {e}", unit.display())))?;
        for &sm in ARCHS {
            let cubin = out.join(format!("{stem}_sm{sm}.cubin"));
            let log_path = out.join(format!("{stem}_sm{sm}.log"));
            let key_path = out.join(format!("{stem}_sm{sm}.key"));
            let args = fa2_nvcc_args(&fa2_source(), &xt.join("stubs"), &unit, sm, &cubin);
            let key = compile_key(&args, &text);
            if cubin.exists()
                && log_path.exists()
                && fs::read_to_string(&key_path).is_ok_and(|k| k == key)
            {
                println!(
                    "xtask: FA2 {what} for sm_{sm} up to date ({})",
                    cubin.display()
                );
                continue;
            }
            let _ = fs::remove_file(&key_path);
            let start = Instant::now();
            println!("xtask: nvcc FA2 {what} for sm_{sm} ({file}; a few GB of memory)");
            let o = Command::new(nvcc_path())
                .args(&args)
                .output()
                .map_err(|e| TaskError(format!("cannot run {}: {e}", nvcc_path().display())))?;
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            fs::write(&log_path, &log)
                .map_err(|e| TaskError(format!("cannot write {}: {e}", log_path.display())))?;
            if !o.status.success() {
                return err(format!(
                    "nvcc failed on {file} for sm_{sm} ({}); log in {}",
                    o.status,
                    log_path.display()
                ));
            }
            fs::write(&key_path, &key)
                .map_err(|e| TaskError(format!("cannot write {}: {e}", key_path.display())))?;
            println!("xtask:   sm_{sm}: {:.0} s", start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

fn compile_triton(out: &Path) -> Result<()> {
    let python = anchors_dir().join("triton-venv/bin/python");
    let script = workspace_root().join("xtask/anchors/triton_fwd.py");
    run_ok(
        "Triton compile (xtask/anchors/triton_fwd.py)",
        Command::new(python)
            .arg(script)
            .arg(out)
            // Triton 3.9's default, set to silence its warning about the coming change
            .env("TRITON_DEFAULT_FP_FUSION", "1")
            .env("TRITON_CACHE_DIR", out.join("triton-cache")),
    )
}

/// First line of `tool args` stdout whose text contains `needle` (for versions).
fn tool_line(tool: &Path, args: &[&str], needle: &str) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains(needle))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| format!("{} (version not readable)", tool.display()))
}

/// The `key: value` lines printed under "Tools and flags" in docs/anchors.md.
pub fn versions_text(date: &str, nvcc: &str, cuobjdump: &str, triton: &str) -> String {
    format!(
        "date: {date} (2-core dev machine, no GPU)\n\
         FlashAttention-2: {}=={} sdist (bundled CUTLASS), forward kernel instantiated by \
         xtask/anchors/fa2_fwd.cu with the traits FA2 picks for bf16 (d64: \
         Flash_fwd_kernel_traits<64,128,128,4>, d128: <128,128,64,4>), Is_even_MN/K, no \
         dropout/alibi/softcap/local\n\
         FlashAttention-2 backward: flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel by \
         xtask/anchors/fa2_bwd.cu with the traits FA2 picks for bf16 with >= 144 KB of shared \
         memory (A100, H100; d64: Flash_bwd_kernel_traits<64,128,128,8,4,4,4,false,false>, \
         d128: <128,64,128,8,2,4,2,false,false>), Is_even_MN/K, no dropout, non-causal and causal\n\
         FlashAttention-2 decode: flash_fwd_splitkv_kernel and flash_fwd_splitkv_combine_kernel \
         by xtask/anchors/fa2_splitkv.cu as flash_attn_with_kvcache launches them for one \
         token with a block table (d64: Flash_fwd_kernel_traits<64,64,256,4>, d128: \
         <128,64,128,4>; not causal, Split, not Is_even_MN, no Append_KV; combine kBlockM 8 / 4, \
         up to 32 splits)\n\
         nvcc (FA2): {nvcc}; wheels {}\n\
         nvcc flags (FA2's setup.py): {} -gencode=arch=compute_{{80,90}},code=sm_{{80,90}}\n\
         Triton: {triton}, xtask/anchors/triton_fwd.py (tutorial 06 forward, plain pointers), \
         GPUTarget(\"cuda\", 80|90, 32)\n\
         attnforge: NVRTC of `cargo xtask setup` (nvidia-cuda-nvrtc-cu12 12.9.86), \
         flash_fwd_{{full,causal}}_d{{64,128}}_bf16 at the default tile and at 128x64 with 8 \
         warps, emitted by attnforge_codegen::emit::emit_with\n\
         SASS: {cuobjdump} (`cuobjdump -sass`, `-res-usage`)\n",
        FLASH_ATTN.0,
        FLASH_ATTN.1,
        CUDA_WHEELS.join(" "),
        FA2_NVCC_FLAGS.join(" "),
    )
}

/// `cargo xtask anchors`.
pub fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        return err("usage: cargo xtask anchors (no options)");
    }
    let start = Instant::now();
    let cuda = setup()?;
    check_pip()?;
    for piece in pieces() {
        install(&piece)?;
    }
    let out = out_dir();
    fs::create_dir_all(&out)
        .map_err(|e| TaskError(format!("cannot create {}: {e}", out.display())))?;
    compile_fa2(&out)?;
    compile_triton(&out)?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let triton = Command::new(anchors_dir().join("triton-venv/bin/python"))
        .args(["-c", "import triton; print('triton ' + triton.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let versions = versions_text(
        &date,
        &tool_line(&nvcc_path(), &["--version"], "release"),
        &tool_line(
            &cuda.join("nvidia/cu13/bin/cuobjdump"),
            &["--version"],
            "release",
        ),
        &triton,
    );
    fs::write(out.join("versions.txt"), versions)
        .map_err(|e| TaskError(format!("cannot write versions.txt: {e}")))?;
    let doc = workspace_root().join("docs").join("anchors.md");
    let mut cmd = cargo();
    cmd.args([
        "run",
        "-p",
        "attnforge-runtime",
        "--example",
        "anchors",
        "--",
    ])
    .arg(&out)
    .arg(&doc)
    .env("ATTNFORGE_CUDA_HOME", &cuda);
    run_step("analyse all SASS and write docs/anchors.md", &mut cmd)?;
    println!(
        "xtask: anchors done in {:.0} s; see {}",
        start.elapsed().as_secs_f64(),
        doc.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvcc_command_has_fa2_flags_arch_and_includes() {
        let a = fa2_nvcc_args(
            Path::new("/fa"),
            Path::new("/stubs"),
            Path::new("/u.cu"),
            90,
            Path::new("/o.cubin"),
        );
        for want in [
            "-O3",
            "--use_fast_math",
            "--expt-relaxed-constexpr",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-cubin",
            "-gencode=arch=compute_90,code=sm_90",
            "-I/fa/csrc/flash_attn/src",
            "-I/fa/csrc/cutlass/include",
            "-I/stubs",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert_eq!(&a[a.len() - 3..], ["-o", "/o.cubin", "/u.cu"]);
    }

    #[test]
    fn compile_key_changes_with_the_command_line_and_the_unit() {
        let args = |sm| {
            fa2_nvcc_args(
                Path::new("/fa"),
                Path::new("/s"),
                Path::new("/u.cu"),
                sm,
                Path::new("/o"),
            )
        };
        let k = compile_key(&args(80), "unit");
        assert_eq!(k, compile_key(&args(80), "unit"));
        assert_ne!(k, compile_key(&args(90), "unit"), "another arch recompiles");
        assert_ne!(
            k,
            compile_key(&args(80), "unit 2"),
            "an edited unit recompiles"
        );
        let stems: Vec<&str> = FA2_UNITS.iter().map(|u| u.0).collect();
        assert_eq!(
            stems,
            ["fa2", "fa2_bwd", "fa2_splitkv"],
            "the example reads these names"
        );
    }

    #[test]
    fn stamp_must_match_pins_and_required_file() {
        let dir = std::env::temp_dir().join(format!("xtask-anchors-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        let p = Piece {
            folder: "x",
            pins: "a==1\nb==2".to_owned(),
            required: "bin/tool".to_owned(),
        };
        assert!(!installed(&dir, &p));
        fs::write(dir.join(STAMP), "a==1\nb==2").unwrap();
        assert!(!installed(&dir, &p), "required file missing");
        fs::write(dir.join("bin/tool"), "").unwrap();
        assert!(installed(&dir, &p));
        fs::write(dir.join(STAMP), "a==1\nb==3").unwrap();
        assert!(!installed(&dir, &p), "another pin reinstalls");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_piece_is_pinned_and_the_sources_exist() {
        for p in pieces() {
            assert!(p.pins.contains("=="), "{} not pinned", p.folder);
        }
        let xt = workspace_root().join("xtask/anchors");
        for f in [
            "fa2_fwd.cu",
            "fa2_bwd.cu",
            "fa2_splitkv.cu",
            "triton_fwd.py",
            "stubs/ATen/cuda/CUDAGeneratorImpl.h",
            "stubs/ATen/cuda/detail/UnpackRaw.cuh",
        ] {
            assert!(xt.join(f).is_file(), "{f}");
        }
        let v = versions_text("D", "N", "C", "T");
        for want in ["date: D", "2.8.3.post2", "--use_fast_math", "T", "C"] {
            assert!(v.contains(want), "{want}");
        }
    }
}
