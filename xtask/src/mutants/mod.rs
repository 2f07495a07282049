//! `cargo xtask mutants`: mutation testing of the kernel generator (not part of CI).
//!
//! Each mutant of [`catalog::CATALOG`] is applied to a scratch copy of the workspace
//! (`target/mutants/src`, one copy for the whole run, re-synced at start; the mutated file is
//! restored after every mutant), the release CLI is rebuilt (its own `CARGO_TARGET_DIR`,
//! `target/mutants/target`, reused across mutants and runs, so only the mutated crate and its
//! dependents rebuild), then:
//! 1. `attnforge check --all --backend sim --json --fail-fast`: a failing kernel kills it;
//! 2. if it survives, the CI test suites most likely to kill it (`cargo test -p CRATE --test
//!    NAME`, see [`suites_for`]); the first failing suite kills it;
//! 3. a survivor whose check outputs and work counters are bit-identical to the unmutated
//!    generator's (the `fingerprint` of `check --json`) is "equivalent" when the catalog gives
//!    the reason, else it survived *unexercised* (counted: the check problems do not reach
//!    the mutated code).
//!
//! Results: `target/mutants/report.md` and `report.json` (rewritten after every mutant),
//! logs of every step under `target/mutants/logs/<id>/`.

pub mod catalog;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use catalog::{Category, Mutant, Occurrence, CATALOG};

use crate::{err, workspace_root, Result, TaskError};

/// Default limit per step (build, check, one test suite), in seconds.
const DEFAULT_STEP_TIMEOUT_S: u64 = 1200;

/// A CI test suite run against survivors of `check --all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    /// `-p` package.
    pub package: &'static str,
    /// `--test` target.
    pub test: &'static str,
}

const fn suite(package: &'static str, test: &'static str) -> Suite {
    Suite { package, test }
}

const CATALOG_PROPS: Suite = suite("attnforge-runtime", "catalog_props");
const CODEGEN_SIM: Suite = suite("attnforge-codegen", "sim");
const EXEC_SMOKE: Suite = suite("attnforge-runtime", "exec_smoke");
const CODEGEN_BLOCKS: Suite = suite("attnforge-codegen", "blocks");
const MASK_AGREEMENT: Suite = suite("attnforge", "macro_mask_agreement");
const DYN_HAX: Suite = suite("attnforge-runtime", "dynamic_hax");
const DYN_LANDMARK_CCA: Suite = suite("attnforge-runtime", "dynamic_landmark_cca");
const DYN_TOPK: Suite = suite("attnforge-runtime", "dynamic_topk");
const CLI_DYNAMIC: Suite = suite("attnforge", "cli_dynamic");
const DYN_LONGHEADS: Suite = suite("attnforge-runtime", "dynamic_longheads");
const CLI_LONGHEADS: Suite = suite("attnforge", "cli_longheads");
const CLASSIFIER_EDGES: Suite = suite("attnforge-runtime", "classifier_edges");
const MASK_RANGES: Suite = suite("attnforge-codegen", "mask_ranges_sim");
const NEW_MASKS_SIM: Suite = suite("attnforge-codegen", "new_masks_sim");

/// Suites never used as killers, with the reason: a text or snapshot diff is not a kill.
pub const EXCLUDED_SUITES: &[(Suite, &str)] = &[
    (
        suite("attnforge-codegen", "golden"),
        "compares emitted text with stored files: any mutant changes the text",
    ),
    (
        suite("attnforge-runtime", "kernel_cache"),
        "cache behaviour, independent of what the kernels compute",
    ),
];

/// The suites run (in this order) against a mutant that survives `check --all`: the ones
/// that execute kernels built from the mutated file. The simulator crate's own tests are not
/// among them: `attnforge-sim` does not depend on the generator, so no mutant changes them.
pub fn suites_for(m: &Mutant) -> Vec<Suite> {
    let file = m.file.rsplit('/').next().unwrap_or(m.file);
    match file {
        "af_hax.cuh" => vec![DYN_HAX, CLI_DYNAMIC],
        "af_longheads.cuh" => vec![DYN_LONGHEADS, CLI_LONGHEADS, CLI_DYNAMIC],
        "af_topk.cuh" => vec![DYN_TOPK, CLI_DYNAMIC],
        "af_landmark.cuh" | "af_cca.cuh" => vec![DYN_LANDMARK_CCA, CLI_DYNAMIC],
        "af_dynamic.cuh" => vec![DYN_TOPK, DYN_LANDMARK_CCA, DYN_HAX, CLI_DYNAMIC],
        _ if m.category == Category::BlockLists => {
            vec![CATALOG_PROPS, CODEGEN_BLOCKS, MASK_AGREEMENT, CODEGEN_SIM]
        }
        // the mask functions: the edge and range tests run them at every tile alignment
        "af_attn.cuh" | "masks.rs"
            if matches!(
                m.category,
                Category::TileClassifier | Category::MaskPredicate
            ) =>
        {
            vec![
                MASK_RANGES,
                NEW_MASKS_SIM,
                CLASSIFIER_EDGES,
                CATALOG_PROPS,
                CODEGEN_SIM,
                EXEC_SMOKE,
            ]
        }
        _ => vec![CATALOG_PROPS, CODEGEN_SIM, EXEC_SMOKE],
    }
}

// ---- patterns ----------------------------------------------------------------------------

/// Why a mutant's pattern does not apply to the current sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale(pub String);

/// The mutated text of `source`, or why the pattern is stale.
pub fn apply(source: &str, m: &Mutant) -> std::result::Result<String, Stale> {
    if m.pattern.is_empty() || m.pattern == m.replacement {
        return Err(Stale(
            "empty pattern or replacement equal to the pattern".into(),
        ));
    }
    let at: Vec<usize> = source.match_indices(m.pattern).map(|(i, _)| i).collect();
    let index = match m.occurrence {
        Occurrence::Unique if at.len() == 1 => 0,
        Occurrence::Unique => {
            return Err(Stale(format!(
                "pattern found {} times, expected exactly once",
                at.len()
            )))
        }
        Occurrence::Nth { index, of } if at.len() == of && index < of => index,
        Occurrence::Nth { index, of } => {
            return Err(Stale(format!(
                "pattern found {} times, expected exactly {of} (mutating match {index})",
                at.len()
            )))
        }
    };
    let start = at[index];
    let mut out = String::with_capacity(source.len() + m.replacement.len());
    out.push_str(&source[..start]);
    out.push_str(m.replacement);
    out.push_str(&source[start + m.pattern.len()..]);
    Ok(out)
}

/// Every catalog problem against the sources under `root`: stale patterns, unreadable files,
/// duplicate ids. Empty when the catalog is current.
pub fn catalog_problems(root: &Path, catalog: &[Mutant]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for m in catalog {
        if !ids.insert(m.id) {
            problems.push((m.id.to_string(), "duplicate id".to_string()));
        }
        match fs::read_to_string(root.join(m.file)) {
            Err(e) => problems.push((m.id.to_string(), format!("cannot read {}: {e}", m.file))),
            Ok(text) => {
                if let Err(Stale(why)) = apply(&text, m) {
                    problems.push((m.id.to_string(), format!("STALE in {}: {why}", m.file)));
                }
            }
        }
    }
    problems
}

// ---- options -----------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Options {
    only: Option<Vec<String>>,
    categories: Option<Vec<Category>>,
    list: bool,
    check_patterns: bool,
    no_tests: bool,
    resume: bool,
    timeout: Option<u64>,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| TaskError(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--list" => o.list = true,
            "--check-patterns" => o.check_patterns = true,
            "--no-tests" => o.no_tests = true,
            "--resume" => o.resume = true,
            "--only" => {
                let v = value("--only")?;
                let ids: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for id in &ids {
                    if !CATALOG.iter().any(|m| m.id == id) {
                        return err(format!(
                            "--only: no mutant `{id}` in the catalog (see `cargo xtask mutants --list`)"
                        ));
                    }
                }
                o.only = Some(ids);
            }
            "--category" => {
                let v = value("--category")?;
                let mut cats = Vec::new();
                for c in v.split(',') {
                    cats.push(Category::parse(c.trim()).ok_or_else(|| {
                        TaskError(format!(
                            "--category: unknown `{c}`; expected one of: {}",
                            Category::ALL.map(Category::name).join(", ")
                        ))
                    })?);
                }
                o.categories = Some(cats);
            }
            "--timeout" => {
                let v = value("--timeout")?;
                o.timeout = Some(v.parse().map_err(|_| {
                    TaskError(format!("--timeout: `{v}` is not a whole number of seconds"))
                })?);
            }
            other => {
                return err(format!(
                    "mutants: unknown option `{other}`; expected --list, --check-patterns, \
                     --only ID,ID, --category NAME,NAME, --no-tests, --resume, --timeout SECONDS"
                ))
            }
        }
    }
    Ok(o)
}

fn selected(o: &Options) -> Vec<&'static Mutant> {
    CATALOG
        .iter()
        .filter(|m| {
            o.only
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == m.id))
        })
        .filter(|m| {
            o.categories
                .as_ref()
                .is_none_or(|cs| cs.contains(&m.category))
        })
        .collect()
}

/// `cargo xtask mutants [OPTIONS]`.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    let root = workspace_root();
    if o.list {
        for m in selected(&o) {
            println!(
                "{:<38} {:<15} {}{}{}",
                m.id,
                m.category.name(),
                m.description,
                if m.named_in_issue { " [issue 16]" } else { "" },
                m.equivalent
                    .map(|r| format!(" [equivalent: {r}]"))
                    .unwrap_or_default()
            );
        }
        println!("{} mutants", selected(&o).len());
        return Ok(());
    }
    if o.check_patterns {
        let problems = catalog_problems(&root, CATALOG);
        for (id, why) in &problems {
            println!("{id}: {why}");
        }
        if !problems.is_empty() {
            return err(format!(
                "{} catalog entries do not match the sources; update xtask/src/mutants/catalog.rs",
                problems.len()
            ));
        }
        println!(
            "xtask: all {} mutant patterns match the sources",
            CATALOG.len()
        );
        return Ok(());
    }
    crate::setup()?;
    Harness::new(&root, &o)?.run_all(&selected(&o))
}

// ---- processes ---------------------------------------------------------------------------

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok,
    Failed(Option<i32>),
    TimedOut,
}

/// Runs `cmd` with stdout/stderr into `log.out`/`log.err`, killing its whole process group
/// after `timeout`.
fn run_logged(cmd: &mut Command, log: &Path, timeout: Duration) -> Result<(Exit, f64)> {
    let out = fs::File::create(log.with_extension("out"))
        .map_err(|e| TaskError(format!("cannot create log {}: {e}", log.display())))?;
    let errf = fs::File::create(log.with_extension("err"))
        .map_err(|e| TaskError(format!("cannot create log {}: {e}", log.display())))?;
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(errf));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| TaskError(format!("cannot start {cmd:?}: {e}")))?;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| TaskError(format!("waiting for {cmd:?}: {e}")))?
        {
            let secs = start.elapsed().as_secs_f64();
            let exit = if status.success() {
                Exit::Ok
            } else {
                Exit::Failed(status.code())
            };
            return Ok((exit, secs));
        }
        if start.elapsed() > timeout {
            // the whole group: cargo's children (rustc, test binaries, g++) too
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return Ok((Exit::TimedOut, start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- check --json ------------------------------------------------------------------------

/// One kernel line of `check --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelLine {
    kernel: String,
    pass: bool,
    detail: String,
    fingerprint: Option<String>,
}

/// The JSON string value of `"key":` in one compact JSON object line, unescaped.
fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('?'),
                    );
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn parse_check_json(text: &str) -> Vec<KernelLine> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| {
            Some(KernelLine {
                kernel: json_str(l, "kernel")?,
                pass: l.contains("\"pass\":true"),
                detail: json_str(l, "detail").unwrap_or_default(),
                fingerprint: json_str(l, "fingerprint"),
            })
        })
        .collect()
}

// ---- results -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Killed by `check --all` or a test suite.
    Killed,
    /// A step hung past the timeout (counted as killed, listed apart).
    Timeout,
    /// Passed everything and changed outputs or counters.
    Survived,
    /// Passed everything with outputs and counters identical to the original's and no
    /// reason in the catalog: the check problems never reach the mutated code.
    Unexercised,
    /// Identical outputs and counters, with the catalog's reason.
    Equivalent,
    /// The pattern does not match the sources.
    Stale,
    /// The mutated generator (Rust) or the generated CUDA does not compile.
    BuildFailed,
}

impl Status {
    fn name(&self) -> &'static str {
        match self {
            Status::Killed => "killed",
            Status::Timeout => "timeout",
            Status::Survived => "survived",
            Status::Unexercised => "survived-unexercised",
            Status::Equivalent => "equivalent",
            Status::Stale => "stale",
            Status::BuildFailed => "build-failed",
        }
    }
    fn parse(s: &str) -> Option<Status> {
        [
            Status::Killed,
            Status::Timeout,
            Status::Survived,
            Status::Unexercised,
            Status::Equivalent,
            Status::Stale,
            Status::BuildFailed,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
    fn counted(&self) -> bool {
        matches!(
            self,
            Status::Killed | Status::Timeout | Status::Survived | Status::Unexercised
        )
    }
    fn is_kill(&self) -> bool {
        matches!(self, Status::Killed | Status::Timeout)
    }
}

#[derive(Debug, Clone)]
struct Outcome {
    mutant: &'static Mutant,
    status: Status,
    /// What killed it (`check --all (kernel)`, `cargo test -p X --test Y (test)`) or the
    /// reason it was not counted.
    by: String,
    build_s: f64,
    check_s: f64,
    tests_s: f64,
    total_s: f64,
}

// ---- harness -----------------------------------------------------------------------------

struct Harness {
    root: PathBuf,
    scratch: PathBuf,
    work: PathBuf,
    target: PathBuf,
    sim_cache: PathBuf,
    logs: PathBuf,
    timeout: Duration,
    no_tests: bool,
    envs: Vec<(String, PathBuf)>,
    /// `(kernel, fingerprint)` per line of the unmutated `check --all`, in order (a kernel
    /// may be checked on several problems, so lines are compared by position).
    baseline: Vec<(String, String)>,
    baseline_cache: BTreeSet<PathBuf>,
    /// Results for the current sources (this run's and earlier runs'), by mutant id.
    outcomes: BTreeMap<&'static str, Outcome>,
    /// Digest of the synced sources (xtask and docs excluded): results of other sources are
    /// dropped.
    tree: String,
    /// Lines of `results.tsv` for other sources, written back unchanged.
    other_results: Vec<String>,
    resume: bool,
    started: String,
}

impl Harness {
    fn new(root: &Path, o: &Options) -> Result<Self> {
        let scratch = root.join("target").join("mutants");
        let cuda = std::env::var_os("ATTNFORGE_CUDA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".toolchain").join("cuda"));
        let target = scratch.join("target");
        let sim_cache = scratch.join("afsim-cache");
        let envs = vec![
            ("CARGO_TARGET_DIR".to_string(), target.clone()),
            ("ATTNFORGE_SIM_CACHE".to_string(), sim_cache.clone()),
            (
                "ATTNFORGE_KERNEL_CACHE".to_string(),
                scratch.join("kernel-cache"),
            ),
            ("ATTNFORGE_CUDA_HOME".to_string(), cuda),
        ];
        Ok(Harness {
            root: root.to_path_buf(),
            work: scratch.join("src"),
            logs: scratch.join("logs"),
            scratch,
            target,
            sim_cache,
            timeout: Duration::from_secs(o.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT_S)),
            no_tests: o.no_tests,
            envs,
            baseline: Vec::new(),
            baseline_cache: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            tree: String::new(),
            other_results: Vec::new(),
            resume: o.resume,
            started: utc_now(),
        })
    }

    fn cargo(&self, args: &[&str]) -> Command {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.args(args).current_dir(&self.work);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    fn cli(&self) -> PathBuf {
        self.target.join("release").join("attnforge")
    }

    fn check_cmd(&self, fail_fast: bool) -> Command {
        let mut c = Command::new(self.cli());
        c.args(["check", "--all", "--backend", "sim", "--json"])
            .current_dir(&self.work);
        if fail_fast {
            c.arg("--fail-fast");
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Copies the workspace's tracked and untracked-but-not-ignored files into the scratch
    /// tree: only files whose content differs are written (unchanged files keep their
    /// mtime, so cargo does not rebuild them), files gone from the workspace are removed.
    fn sync(&mut self) -> Result<()> {
        let out = Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(&self.root)
            .output()
            .map_err(|e| TaskError(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            return err(format!(
                "git ls-files failed in {}: {}",
                self.root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let files: BTreeSet<PathBuf> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect();
        let mut written = 0;
        let mut digest = Fnv::default();
        for rel in &files {
            let src = self.root.join(rel);
            let Ok(bytes) = fs::read(&src) else {
                continue; // deleted in the work tree but not yet in the index
            };
            let text_only = rel.starts_with("xtask")
                || rel.starts_with("docs")
                || rel.extension().is_some_and(|e| e == "md");
            if !text_only {
                digest.eat(rel.to_string_lossy().as_bytes());
                digest.eat(&bytes);
            }
            let dst = self.work.join(rel);
            if fs::read(&dst).is_ok_and(|b| b == bytes) {
                continue;
            }
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| TaskError(format!("cannot create {}: {e}", parent.display())))?;
            }
            fs::write(&dst, &bytes)
                .map_err(|e| TaskError(format!("cannot write {}: {e}", dst.display())))?;
            written += 1;
        }
        self.tree = format!("{:016x}", digest.0);
        let mut removed = 0;
        remove_extra(&self.work, &self.work, &files, &mut removed)?;
        println!(
            "xtask: scratch tree {}: {written} files written, {removed} removed",
            self.work.display()
        );
        Ok(())
    }

    /// First run only: copies the workspace's `target/release` into the scratch target
    /// directory. Cargo finds the dependencies fresh there (their fingerprints do not depend on
    /// the workspace path), so the first release build compiles only workspace crates. Not
    /// `target/debug`: measured, the suites' `cargo test -p CRATE` resolves other dependency
    /// features than the workspace build that fills it and recompiles them anyway.
    fn seed_target(&self) {
        for profile in ["release"] {
            let (from, to) = (
                self.root.join("target").join(profile),
                self.target.join(profile),
            );
            if to.exists() || !from.is_dir() {
                continue;
            }
            let _ = fs::create_dir_all(&self.target);
            println!("xtask: seeding {} from {}", to.display(), from.display());
            let ok = Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&from)
                .arg(&to)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // not fatal: the first build then compiles the dependencies too
                let _ = fs::remove_dir_all(&to);
                println!("xtask: seeding failed; the first build compiles everything");
            }
        }
    }

    fn sim_cache_entries(&self) -> BTreeSet<PathBuf> {
        fs::read_dir(&self.sim_cache)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// Drops simulator libraries built for a mutant (they are never hit again).
    fn prune_sim_cache(&self) {
        for p in self.sim_cache_entries() {
            if !self.baseline_cache.contains(&p) {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// Builds the release CLI of the scratch tree, logging to `dir/build`.
    fn build_cli(&self, dir: &Path) -> Result<(Exit, f64)> {
        run_logged(
            &mut self.cargo(&[
                "build",
                "--release",
                "-p",
                "attnforge",
                "--bin",
                "attnforge",
            ]),
            &dir.join("build"),
            self.timeout,
        )
    }

    fn baseline(&mut self) -> Result<()> {
        let dir = self.logs.join("baseline");
        fs::create_dir_all(&dir)
            .map_err(|e| TaskError(format!("cannot create {}: {e}", dir.display())))?;
        println!("xtask: baseline: building the release CLI of the unmutated tree");
        let (exit, secs) = self.build_cli(&dir)?;
        if exit != Exit::Ok {
            return err(format!(
                "the unmutated tree does not build ({exit:?}); see {}:\n{}",
                dir.join("build.err").display(),
                tail(&dir.join("build.err"), 20)
            ));
        }
        println!("xtask: baseline build {secs:.0} s; check --all");
        let (exit, secs) =
            run_logged(&mut self.check_cmd(false), &dir.join("check"), self.timeout)?;
        let lines =
            parse_check_json(&fs::read_to_string(dir.join("check.out")).unwrap_or_default());
        let failing: Vec<&KernelLine> = lines.iter().filter(|l| !l.pass).collect();
        if exit != Exit::Ok || !failing.is_empty() || lines.is_empty() {
            return err(format!(
                "the unmutated tree fails `check --all` ({exit:?}, {} failing kernels: {}); fix \
                 that first (logs in {})",
                failing.len(),
                failing
                    .iter()
                    .map(|l| l.kernel.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display()
            ));
        }
        for l in &lines {
            let Some(fp) = &l.fingerprint else {
                return err(format!(
                    "check --json printed no fingerprint for {}: the CLI predates `cargo xtask \
                     mutants`",
                    l.kernel
                ));
            };
            self.baseline.push((l.kernel.clone(), fp.clone()));
        }
        self.baseline_cache = self.sim_cache_entries();
        println!(
            "xtask: baseline check {secs:.0} s, {} kernels pass",
            lines.len()
        );
        Ok(())
    }

    fn run_all(mut self, mutants: &[&'static Mutant]) -> Result<()> {
        if mutants.is_empty() {
            return err("no mutant selected (see --list)");
        }
        fs::create_dir_all(&self.work)
            .map_err(|e| TaskError(format!("cannot create {}: {e}", self.work.display())))?;
        self.sync()?;
        self.load_results();
        self.seed_target();
        for (s, why) in EXCLUDED_SUITES {
            println!(
                "xtask: never a killer: cargo test -p {} --test {} ({why})",
                s.package, s.test
            );
        }
        let total = Instant::now();
        // stale patterns are reported without building anything
        let todo: Vec<&'static Mutant> = mutants
            .iter()
            .copied()
            .filter(|m| {
                let done = self.resume && self.outcomes.contains_key(m.id);
                if done {
                    println!(
                        "xtask: [{}] already done for these sources (--resume)",
                        m.id
                    );
                }
                !done
            })
            .collect();
        let fresh: Vec<&'static Mutant> = todo
            .into_iter()
            .filter(|m| {
                let text = fs::read_to_string(self.work.join(m.file)).unwrap_or_default();
                match apply(&text, m) {
                    Ok(_) => true,
                    Err(Stale(why)) => {
                        println!("xtask: [{}] STALE: {why}", m.id);
                        self.outcomes.insert(
                            m.id,
                            Outcome {
                                mutant: m,
                                status: Status::Stale,
                                by: format!("{}: {why}", m.file),
                                build_s: 0.0,
                                check_s: 0.0,
                                tests_s: 0.0,
                                total_s: 0.0,
                            },
                        );
                        false
                    }
                }
            })
            .collect();
        if !fresh.is_empty() {
            self.baseline()?;
        }
        for (i, m) in fresh.iter().enumerate() {
            println!(
                "\nxtask: [{}/{}] {} ({}): {}",
                i + 1,
                fresh.len(),
                m.id,
                m.category.name(),
                m.description
            );
            let path = self.work.join(m.file);
            let original = fs::read(&path)
                .map_err(|e| TaskError(format!("cannot read {}: {e}", path.display())))?;
            let outcome = self.run_one(m);
            // restore before anything else, even when the run failed
            fs::write(&path, original)
                .map_err(|e| TaskError(format!("cannot restore {}: {e}", path.display())))?;
            self.prune_sim_cache();
            let outcome = outcome?;
            println!(
                "xtask: [{}] {} {} ({:.0} s: build {:.0}, check {:.0}, tests {:.0})",
                m.id,
                outcome.status.name(),
                outcome.by,
                outcome.total_s,
                outcome.build_s,
                outcome.check_s,
                outcome.tests_s
            );
            self.outcomes.insert(m.id, outcome);
            self.write_reports(total.elapsed().as_secs_f64())?;
        }
        self.write_reports(total.elapsed().as_secs_f64())?;
        let stale = mutants
            .iter()
            .filter(|m| {
                self.outcomes
                    .get(m.id)
                    .is_some_and(|o| o.status == Status::Stale)
            })
            .count();
        println!(
            "\nxtask: report in {}",
            self.scratch.join("report.md").display()
        );
        if stale > 0 {
            return err(format!(
                "{stale} mutants are STALE (their pattern no longer matches the sources); update \
                 xtask/src/mutants/catalog.rs"
            ));
        }
        Ok(())
    }

    fn run_one(&self, m: &'static Mutant) -> Result<Outcome> {
        let start = Instant::now();
        let dir = self.logs.join(m.id);
        fs::create_dir_all(&dir)
            .map_err(|e| TaskError(format!("cannot create {}: {e}", dir.display())))?;
        let path = self.work.join(m.file);
        let text = fs::read_to_string(&path)
            .map_err(|e| TaskError(format!("cannot read {}: {e}", path.display())))?;
        let mut o = Outcome {
            mutant: m,
            status: Status::Stale,
            by: String::new(),
            build_s: 0.0,
            check_s: 0.0,
            tests_s: 0.0,
            total_s: 0.0,
        };
        let mutated = match apply(&text, m) {
            Ok(t) => t,
            Err(Stale(why)) => {
                o.by = why;
                return Ok(o);
            }
        };
        fs::write(&path, mutated)
            .map_err(|e| TaskError(format!("cannot write {}: {e}", path.display())))?;
        let finish = |mut o: Outcome, status: Status, by: String| {
            o.status = status;
            o.by = by;
            o.total_s = start.elapsed().as_secs_f64();
            Ok(o)
        };

        let (exit, secs) = self.build_cli(&dir)?;
        o.build_s = secs;
        match exit {
            Exit::Ok => {}
            Exit::TimedOut => {
                return finish(o, Status::BuildFailed, "cargo build timed out".into())
            }
            Exit::Failed(_) => {
                let first = first_error(&dir.join("build.err"));
                return finish(o, Status::BuildFailed, format!("rustc: {first}"));
            }
        }

        let (exit, secs) = run_logged(&mut self.check_cmd(true), &dir.join("check"), self.timeout)?;
        o.check_s = secs;
        let lines =
            parse_check_json(&fs::read_to_string(dir.join("check.out")).unwrap_or_default());
        if exit == Exit::TimedOut {
            let last = lines.last().map_or("the first kernel".to_string(), |l| {
                format!("the kernel after {}", l.kernel)
            });
            return finish(o, Status::Timeout, format!("check --all hung in {last}"));
        }
        if let Some(bad) = lines.iter().find(|l| !l.pass) {
            let detail = one_line(&bad.detail);
            if bad.detail.contains("failed to compile kernel") {
                return finish(
                    o,
                    Status::BuildFailed,
                    format!("generated CUDA does not compile (g++): {}", bad.kernel),
                );
            }
            return finish(
                o,
                Status::Killed,
                format!("check --all ({}: {detail})", bad.kernel),
            );
        }
        if exit != Exit::Ok {
            // exit 2: an input error the mutant provoked (e.g. a validation), or a crash
            return finish(
                o,
                Status::Killed,
                format!(
                    "check --all exited with {exit:?}: {}",
                    one_line(&tail(&dir.join("check.err"), 3))
                ),
            );
        }

        if !self.no_tests {
            for s in suites_for(m) {
                let label = format!("cargo test -p {} --test {}", s.package, s.test);
                let log = dir.join(format!("test-{}", s.test));
                let (exit, secs) = run_logged(
                    &mut self.cargo(&["test", "-p", s.package, "--test", s.test]),
                    &log,
                    self.timeout,
                )?;
                o.tests_s += secs;
                match exit {
                    Exit::Ok => {}
                    Exit::TimedOut => {
                        return finish(o, Status::Timeout, format!("{label} hung"));
                    }
                    Exit::Failed(_) => {
                        let stdout =
                            fs::read_to_string(log.with_extension("out")).unwrap_or_default();
                        let failed: Vec<&str> = stdout
                            .lines()
                            .filter_map(|l| {
                                l.strip_prefix("test ")
                                    .and_then(|r| r.strip_suffix(" ... FAILED"))
                            })
                            .collect();
                        if failed.is_empty() {
                            let first = first_error(&log.with_extension("err"));
                            return finish(
                                o,
                                Status::BuildFailed,
                                format!("{label} did not build: {first}"),
                            );
                        }
                        return finish(
                            o,
                            Status::Killed,
                            format!("{label} ({})", failed.join(", ")),
                        );
                    }
                }
            }
        }

        let changed = lines
            .iter()
            .zip(&self.baseline)
            .filter(|(l, (kernel, fp))| l.kernel != *kernel || l.fingerprint.as_ref() != Some(fp))
            .map(|(l, _)| l.kernel.as_str())
            .collect::<Vec<_>>();
        let identical = lines.len() == self.baseline.len() && changed.is_empty();
        let tests = if self.no_tests {
            " (tests not run: --no-tests)"
        } else {
            ""
        };
        match (identical, m.equivalent) {
            (true, Some(reason)) => finish(o, Status::Equivalent, reason.to_string()),
            (true, None) => finish(
                o,
                Status::Unexercised,
                format!("outputs and counters identical on every check problem{tests}"),
            ),
            (false, Some(_)) => finish(
                o,
                Status::Survived,
                format!(
                    "listed as equivalent but changes {} ({} kernels){tests}",
                    changed.first().copied().unwrap_or("?"),
                    changed.len()
                ),
            ),
            (false, None) => finish(
                o,
                Status::Survived,
                format!(
                    "changes outputs or counters of {} kernels (first: {}){tests}",
                    changed.len(),
                    changed.first().copied().unwrap_or("?")
                ),
            ),
        }
    }

    /// Results of earlier runs on the same sources (`results.tsv`).
    fn load_results(&mut self) {
        let text = fs::read_to_string(self.scratch.join("results.tsv")).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 || f[0] != self.tree {
                self.other_results.push(line.to_string());
                continue;
            }
            let (Some(m), Some(status)) =
                (CATALOG.iter().find(|m| m.id == f[1]), Status::parse(f[2]))
            else {
                continue;
            };
            let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
            self.outcomes.insert(
                m.id,
                Outcome {
                    mutant: m,
                    status,
                    by: f[3].to_string(),
                    build_s: num(f[4]),
                    check_s: num(f[5]),
                    tests_s: num(f[6]),
                    total_s: num(f[7]),
                },
            );
        }
        if !self.outcomes.is_empty() {
            println!(
                "xtask: {} results of earlier runs on these sources kept (results.tsv)",
                self.outcomes.len()
            );
        }
    }

    fn write_reports(&self, elapsed_s: f64) -> Result<()> {
        // catalog order
        let outcomes: Vec<Outcome> = CATALOG
            .iter()
            .filter_map(|m| self.outcomes.get(m.id).cloned())
            .collect();
        let mut tsv = String::new();
        for line in &self.other_results {
            tsv.push_str(line);
            tsv.push('\n');
        }
        for o in &outcomes {
            let _ = writeln!(
                tsv,
                "{}\t{}\t{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
                self.tree,
                o.mutant.id,
                o.status.name(),
                one_line(&o.by.replace('\t', " ")),
                o.build_s,
                o.check_s,
                o.tests_s,
                o.total_s
            );
        }
        let md = report_md(&outcomes, &self.started, elapsed_s, &self.tree);
        let json = report_json(&outcomes, &self.started, elapsed_s);
        for (name, text) in [
            ("report.md", md),
            ("report.json", json),
            ("results.tsv", tsv),
        ] {
            let p = self.scratch.join(name);
            fs::write(&p, text)
                .map_err(|e| TaskError(format!("cannot write {}: {e}", p.display())))?;
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Removes files under `dir` (recursively) that are not in `keep` (paths relative to `base`).
fn remove_extra(
    base: &Path,
    dir: &Path,
    keep: &BTreeSet<PathBuf>,
    removed: &mut usize,
) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap_or(&p).to_path_buf();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            remove_extra(base, &p, keep, removed)?;
        } else if !keep.contains(&rel) {
            fs::remove_file(&p)
                .map_err(|e| TaskError(format!("cannot remove {}: {e}", p.display())))?;
            *removed += 1;
        }
    }
    Ok(())
}

fn first_error(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("error"))
        .map_or_else(|| one_line(&tail(path, 2)), |l| l.to_string())
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 160 {
        let cut: String = flat.chars().take(157).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no dependency).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

struct Tally {
    killed: usize,
    counted: usize,
}

fn tally(outcomes: &[Outcome]) -> Tally {
    Tally {
        killed: outcomes.iter().filter(|o| o.status.is_kill()).count(),
        counted: outcomes.iter().filter(|o| o.status.counted()).count(),
    }
}

fn rate(t: &Tally) -> String {
    if t.counted == 0 {
        "n/a".to_string()
    } else {
        format!("{:.1}%", 100.0 * t.killed as f64 / t.counted as f64)
    }
}

fn report_md(outcomes: &[Outcome], started: &str, elapsed_s: f64, tree: &str) -> String {
    let t = tally(outcomes);
    let mut s = String::new();
    let _ = writeln!(s, "# Mutation testing report\n");
    let _ = writeln!(
        s,
        "Sources {tree} (digest); last run started {started}, {:.0} s. {} mutants with a result \
         for these sources (this run and earlier ones, `results.tsv`). Kill rate = killed / (killed + \
         timeout + survived + survived-unexercised) = {}/{} = **{}**; equivalent, stale and \
         build-failed mutants are listed, not counted.\n",
        elapsed_s,
        outcomes.len(),
        t.killed,
        t.counted,
        rate(&t)
    );
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *by_status.entry(o.status.name()).or_default() += 1;
    }
    let _ = writeln!(
        s,
        "Statuses: {}\n",
        by_status
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "| category | mutants | killed | counted | kill rate |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for c in Category::ALL {
        let os: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.mutant.category == c)
            .cloned()
            .collect();
        if os.is_empty() {
            continue;
        }
        let tc = tally(&os);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            c.name(),
            os.len(),
            tc.killed,
            tc.counted,
            rate(&tc)
        );
    }
    let named: Vec<String> = outcomes
        .iter()
        .filter(|o| o.mutant.named_in_issue)
        .map(|o| format!("`{}` {}", o.mutant.id, o.status.name()))
        .collect();
    let named_total = CATALOG.iter().filter(|m| m.named_in_issue).count();
    let _ = writeln!(
        s,
        "\nNamed in issue 16 ({} of {named_total} with a result): {}",
        named.len(),
        if named.is_empty() {
            "none yet".to_string()
        } else {
            named.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "\n| mutant | category | status | killed by / note | build s | check s | tests s | total s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let _ = writeln!(
            s,
            "| `{}`{} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            o.mutant.id,
            if o.mutant.named_in_issue {
                " (issue)"
            } else {
                ""
            },
            o.mutant.category.name(),
            o.status.name(),
            o.by.replace('|', "\\|"),
            o.build_s,
            o.check_s,
            o.tests_s,
            o.total_s
        );
    }
    s
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report_json(outcomes: &[Outcome], started: &str, elapsed_s: f64) -> String {
    let t = tally(outcomes);
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\n  \"started\": {},\n  \"elapsed_s\": {elapsed_s:.1},\n  \"killed\": {},\n  \"counted\": {},\n  \"kill_rate\": {},\n  \"mutants\": [",
        json_escape(started),
        t.killed,
        t.counted,
        if t.counted == 0 {
            "null".to_string()
        } else {
            format!("{:.4}", t.killed as f64 / t.counted as f64)
        }
    );
    for (i, o) in outcomes.iter().enumerate() {
        let _ = write!(
            s,
            "{}\n    {{\"id\": {}, \"category\": {}, \"file\": {}, \"status\": {}, \"by\": {}, \
             \"named_in_issue\": {}, \"build_s\": {:.1}, \"check_s\": {:.1}, \"tests_s\": {:.1}, \
             \"total_s\": {:.1}}}",
            if i == 0 { "" } else { "," },
            json_escape(o.mutant.id),
            json_escape(o.mutant.category.name()),
            json_escape(o.mutant.file),
            json_escape(o.status.name()),
            json_escape(&o.by),
            o.mutant.named_in_issue,
            o.build_s,
            o.check_s,
            o.tests_s,
            o.total_s
        );
    }
    s.push_str("\n  ]\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI guard of the catalog: every pattern matches the current sources exactly as its
    /// entry says. A template change that moves a pattern fails here; update the catalog.
    #[test]
    fn catalog_patterns_match_current_sources() {
        let problems = catalog_problems(&workspace_root(), CATALOG);
        assert!(
            problems.is_empty(),
            "stale mutant catalog entries (update xtask/src/mutants/catalog.rs):\n{}",
            problems
                .iter()
                .map(|(id, why)| format!("  {id}: {why}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn catalog_is_large_and_covers_every_category_and_the_issue() {
        assert!(CATALOG.len() >= 45, "{} mutants", CATALOG.len());
        for c in Category::ALL {
            assert!(
                CATALOG.iter().any(|m| m.category == c),
                "no mutant in category {}",
                c.name()
            );
        }
        // issue 16 names 11 mutants (two for the running-max guard: both mainloops)
        assert_eq!(CATALOG.iter().filter(|m| m.named_in_issue).count(), 12);
        for m in CATALOG {
            assert!(
                !m.description.is_empty() && !m.description.contains('\n'),
                "{}",
                m.id
            );
            assert!(
                m.id.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                m.id
            );
        }
    }

    #[test]
    fn a_moved_pattern_is_stale_not_misapplied() {
        let m = catalog::CATALOG[0];
        let src = format!("x\n{}\ny\n", m.pattern);
        assert_eq!(
            apply(&src, &m).unwrap(),
            format!("x\n{}\ny\n", m.replacement)
        );
        assert!(apply("x\ny\n", &m).is_err(), "missing pattern");
        let twice = format!("{0}\n{0}\n", m.pattern);
        assert!(apply(&twice, &m).is_err(), "ambiguous pattern");
        let nth = Mutant {
            occurrence: Occurrence::Nth { index: 1, of: 2 },
            ..m
        };
        assert_eq!(
            apply(&twice, &nth).unwrap(),
            format!("{}\n{}\n", m.pattern, m.replacement)
        );
        assert!(
            apply(&src, &nth).is_err(),
            "one match where two are expected"
        );
    }

    #[test]
    fn text_diff_suites_never_kill() {
        for m in CATALOG {
            for s in suites_for(m) {
                assert!(
                    !EXCLUDED_SUITES.iter().any(|(x, _)| *x == s),
                    "{}: {s:?}",
                    m.id
                );
            }
        }
    }

    #[test]
    fn check_json_lines_parse() {
        let text = "noise\n{\"detail\":\"\",\"fingerprint\":\"00ff\",\"kernel\":\"a__m64\",\"pass\":true}\n\
                    {\"detail\":\"max err \\\"x\\\"\\nsecond\",\"fingerprint\":null,\"kernel\":\"b\",\"pass\":false}\n";
        let l = parse_check_json(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].fingerprint.as_deref(), Some("00ff"));
        assert!(l[0].pass && !l[1].pass);
        assert_eq!(l[1].detail, "max err \"x\"\nsecond");
        assert_eq!(l[1].fingerprint, None);
    }

    #[test]
    fn kill_rate_leaves_out_equivalent_stale_and_build_failures() {
        let m = &catalog::CATALOG[0];
        let o = |status| Outcome {
            mutant: m,
            status,
            by: String::new(),
            build_s: 0.0,
            check_s: 0.0,
            tests_s: 0.0,
            total_s: 0.0,
        };
        let os = [
            o(Status::Killed),
            o(Status::Timeout),
            o(Status::Survived),
            o(Status::Unexercised),
            o(Status::Equivalent),
            o(Status::Stale),
            o(Status::BuildFailed),
        ];
        let t = tally(&os);
        assert_eq!((t.killed, t.counted), (2, 4));
        assert_eq!(rate(&t), "50.0%");
        // results.tsv stores the status by name
        for o in &os {
            assert_eq!(Status::parse(o.status.name()), Some(o.status.clone()));
        }
    }
}
