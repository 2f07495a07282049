//! The persistent tuning cache: one JSON file keyed by
//! `<canonical variant>|<arch>|<device>|<shape bucket>`; each entry holds the complete
//! [`KernelTuning`] (every candidate's result, so a cache entry explains why its winner won),
//! the codegen hash it was tuned with and a SHA-256 checksum of the entry.
//!
//! - stale (the codegen hash of the current candidate set differs) -> re-tuned;
//! - corrupt (unparsable file, or an entry whose checksum does not match) -> reported,
//!   never trusted, re-tuned; an unparsable file is kept aside as `<file>.corrupt`
//!   (`<file>.corrupt.1`, ... when that exists, so no backup is overwritten);
//! - concurrent writers: a lock file (`<file>.lock`, created exclusively, holding the
//!   writer's pid, host and start time) serialises writers; each writer re-reads the file
//!   under the lock, merges its entries, writes a temporary file and renames it over the
//!   cache (atomic on POSIX), so readers never see a partial file and no writer's entries
//!   are lost. A writer holds the lock for milliseconds, so a lock whose holder is no longer
//!   running (same host) or that is older than [`STALE_LOCK`] is taken over, with a note;
//!   waiting longer than a second is reported with the holder and how to clear the lock;
//! - a read-only file is never replaced ([`Cache::check_writable`] says so before any work).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tuner::{hex, KernelTuning};

/// Format version of the file.
pub const FORMAT: u32 = 1;
/// Environment variable overriding the default cache path.
pub const CACHE_ENV: &str = "ATTNFORGE_TUNE_CACHE";
/// Default location, relative to the workspace root.
pub const DEFAULT_CACHE: &str = "target/attnforge-tune/cache.json";

/// A lock older than this is considered abandoned (a writer that crashed or hangs): a writer
/// holds the lock only while it merges and renames the file, milliseconds.
pub const STALE_LOCK: Duration = Duration::from_secs(60);
/// Longest wait for a lock whose holder is alive and younger than [`STALE_LOCK`].
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// A wait longer than this is reported (what is waited for and how to clear it).
const LOCK_REPORT_AFTER: Duration = Duration::from_secs(1);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One cached tuning. The tuning is kept as its JSON *text*, and the checksum is taken over
/// that text: serde_json's default float parser is not exactly round-trip, so hashing a
/// re-parsed value would flag valid entries as corrupt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// SHA-256 (hex) of `tuning`.
    pub checksum: String,
    /// The [`KernelTuning`] as JSON text.
    pub tuning: String,
}

/// The file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheFile {
    /// [`FORMAT`].
    pub format: u32,
    /// Entries by key.
    pub entries: BTreeMap<String, serde_json::Value>,
}

/// Result of a lookup.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// A valid entry tuned with the current codegen.
    Hit(Box<KernelTuning>),
    /// No entry.
    Miss,
    /// An entry tuned with other code (hash it was tuned with).
    Stale(String),
    /// An entry that failed its checksum or did not parse.
    Corrupt(String),
}

/// Cache errors (I/O, lock timeout, not writable).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// File system error.
    #[error("tuning cache `{path}`: {source}; fix: check the path or pass --cache / {CACHE_ENV}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The lock was held too long by a live writer.
    #[error("tuning cache lock `{path}` {holder}, still held after {LOCK_TIMEOUT:?}; fix: if no `attnforge tune` is running, delete it (rm {path})")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// Who holds it (pid, host, age) as far as recorded.
        holder: String,
    },
    /// The cache file's permissions forbid writing: it is not replaced behind the user's back.
    #[error("tuning cache `{0}` is read-only; fix: make it writable (chmod u+w {0}) or pass --cache / {CACHE_ENV} with a writable path")]
    ReadOnly(PathBuf),
    /// The cache's folder cannot be created or written (a file, a read-only folder or file
    /// system, no permission).
    #[error("tuning cache `{path}`: cannot write to its folder `{dir}` ({source}); fix: make the folder writable or pass --cache / {CACHE_ENV} with a writable path")]
    NotWritable {
        /// The cache file.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
        /// The error of the write probe.
        source: std::io::Error,
    },
    /// The cache path is a folder.
    #[error("tuning cache `{0}` is a folder; fix: pass --cache / {CACHE_ENV} with a file path such as {0}/cache.json")]
    IsFolder(PathBuf),
}

/// The cache key of a tuning.
pub fn key(variant: &str, arch: &str, device: &str, bucket: &str) -> String {
    format!("{variant}|{arch}|{device}|{bucket}")
}

/// The key of `t`.
pub fn key_of(t: &KernelTuning) -> String {
    key(&t.variant, t.arch.sm_name(), &t.device, &t.bucket)
}

fn checksum(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Parse and verify a stored entry.
fn verify(k: &str, v: &serde_json::Value) -> Result<KernelTuning, String> {
    let e: Entry =
        serde_json::from_value(v.clone()).map_err(|e| format!("entry does not parse: {e}"))?;
    if checksum(&e.tuning) != e.checksum {
        return Err("checksum mismatch".to_owned());
    }
    let t: KernelTuning =
        serde_json::from_str(&e.tuning).map_err(|e| format!("tuning does not parse: {e}"))?;
    if key_of(&t) != k {
        return Err("entry stored under another key".to_owned());
    }
    Ok(t)
}

/// A cache file on disk.
#[derive(Clone, Debug)]
pub struct Cache {
    path: PathBuf,
}

/// What [`Cache::load`] found.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The file's content (empty when absent or corrupt).
    pub file: CacheFile,
    /// Why the whole file was not usable, if it was not.
    pub corrupt: Option<String>,
}

impl Cache {
    /// A cache at `path` (created on first store).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Cache { path: path.into() }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Read the file. Absent -> empty; unparsable or unreadable -> empty with `corrupt` set.
    pub fn load(&self) -> Loaded {
        match fs::read_to_string(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::default(),
            Err(e) => Loaded {
                file: CacheFile::default(),
                corrupt: Some(format!("unreadable: {e}")),
            },
            Ok(text) => match serde_json::from_str::<CacheFile>(&text) {
                Ok(f) if f.format == FORMAT => Loaded {
                    file: f,
                    corrupt: None,
                },
                Ok(f) => Loaded {
                    file: CacheFile::default(),
                    corrupt: Some(format!("format {} (expected {FORMAT})", f.format)),
                },
                Err(e) => Loaded {
                    file: CacheFile::default(),
                    corrupt: Some(format!("unparsable JSON: {e}")),
                },
            },
        }
    }

    /// Look `key` up, checking the checksum and the codegen hash.
    pub fn lookup(file: &CacheFile, key: &str, codegen_hash: &str) -> Lookup {
        let Some(v) = file.entries.get(key) else {
            return Lookup::Miss;
        };
        let t = match verify(key, v) {
            Ok(t) => t,
            Err(why) => return Lookup::Corrupt(why),
        };
        if t.codegen_hash != codegen_hash {
            return Lookup::Stale(t.codegen_hash);
        }
        Lookup::Hit(Box::new(t))
    }

    /// Valid entries of the file (corrupt ones skipped).
    pub fn entries(file: &CacheFile) -> Vec<KernelTuning> {
        file.entries
            .iter()
            .filter_map(|(k, v)| verify(k, v).ok())
            .collect()
    }

    /// The lock file (`<file>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("json.lock")
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Check, before any tuning work, that [`Cache::store`] will be able to write: the
    /// folder can be created and written (a probe file is created and removed), the path is
    /// not a folder, and an existing file is not read-only.
    pub fn check_writable(&self) -> Result<(), CacheError> {
        let dir = self.dir();
        let not_writable = |source| CacheError::NotWritable {
            path: self.path.clone(),
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(not_writable)?;
        let probe = unique_sibling(&self.path, "probe");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(not_writable)?;
        let _ = fs::remove_file(&probe);
        self.check_file_writable()
    }

    fn check_file_writable(&self) -> Result<(), CacheError> {
        match fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => Err(CacheError::IsFolder(self.path.clone())),
            Ok(m) if m.permissions().readonly() => Err(CacheError::ReadOnly(self.path.clone())),
            _ => Ok(()),
        }
    }

    fn lock(&self, note: &mut dyn FnMut(String)) -> Result<LockGuard, CacheError> {
        let lock = self.lock_path();
        let start = Instant::now();
        let mut reported = false;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let _ = write!(
                        f,
                        "pid {}\nhost {}\nsince {since}\n",
                        std::process::id(),
                        hostname()
                    );
                    return Ok(LockGuard(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // vanished since: the holder finished, try again at once
                    let Some(holder) = Holder::read(&lock) else {
                        continue;
                    };
                    if let Some(why) = holder.stale() {
                        if take_over(&lock, &holder) {
                            note(format!(
                                "tuning cache lock `{}` {why}: taken over",
                                lock.display()
                            ));
                        }
                        continue;
                    }
                    if !reported && start.elapsed() > LOCK_REPORT_AFTER {
                        reported = true;
                        note(format!(
                            "waiting for the tuning cache lock `{}` ({}; another `attnforge tune` is writing the cache, which takes milliseconds; a lock whose holder has exited or that is over {} s old is taken over). If no tuner is running, delete it: rm {}",
                            lock.display(),
                            holder.describe(),
                            STALE_LOCK.as_secs(),
                            lock.display()
                        ));
                    }
                    if start.elapsed() > LOCK_TIMEOUT {
                        return Err(CacheError::LockTimeout {
                            path: lock,
                            holder: holder.describe(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// If the file is (still, checked under the lock) corrupt, move it aside to a free
    /// `<file>.corrupt[.N]` name and return that name; `note` receives lock messages.
    pub fn set_aside_corrupt(
        &self,
        note: &mut dyn FnMut(String),
    ) -> Result<Option<PathBuf>, CacheError> {
        let _guard = self.lock(note)?;
        self.set_aside_locked()
    }

    fn set_aside_locked(&self) -> Result<Option<PathBuf>, CacheError> {
        if self.load().corrupt.is_none() || !self.path.exists() {
            return Ok(None);
        }
        let base = self.path.with_extension("json.corrupt");
        let mut backup = base.clone();
        let mut n = 0;
        while backup.exists() {
            n += 1;
            backup = PathBuf::from(format!("{}.{n}", base.display()));
        }
        fs::rename(&self.path, &backup).map_err(|e| self.io(e))?;
        Ok(Some(backup))
    }

    /// Merge `tunings` into the file (under the lock, re-reading the file first; atomic
    /// rename). A corrupt file is kept aside as `<file>.corrupt` and replaced. Lock messages
    /// (waiting, taking over a stale lock) go to stderr; see [`Cache::store_with`].
    pub fn store(&self, tunings: &[KernelTuning]) -> Result<(), CacheError> {
        self.store_with(tunings, &mut |m| eprintln!("{m}"))
    }

    /// [`Cache::store`], passing lock messages to `note`.
    pub fn store_with(
        &self,
        tunings: &[KernelTuning],
        note: &mut dyn FnMut(String),
    ) -> Result<(), CacheError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        self.check_file_writable()?;
        let _guard = self.lock(note)?;
        let loaded = self.load();
        if loaded.corrupt.is_some() {
            self.set_aside_locked()?;
        }
        let mut file = loaded.file;
        file.format = FORMAT;
        // drop entries that are corrupt
        file.entries.retain(|k, v| verify(k, v).is_ok());
        for t in tunings {
            let text = serde_json::to_string(t).map_err(|e| self.io(e.into()))?;
            let e = Entry {
                checksum: checksum(&text),
                tuning: text,
            };
            let v = serde_json::to_value(&e).map_err(|e| self.io(e.into()))?;
            file.entries.insert(key_of(t), v);
        }
        let tmp = unique_sibling(&self.path, "tmp");
        let text = serde_json::to_string_pretty(&file).map_err(|e| self.io(e.into()))?;
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(|e| self.io(e))
    }
}

/// A name next to `path` that no other process or thread uses.
pub(crate) fn unique_sibling(path: &Path, what: &str) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{what}.{}.{n}", std::process::id()));
    PathBuf::from(s)
}

/// This machine's name (to tell whether a lock's pid can be checked here).
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What a lock file says about its writer.
#[derive(Debug)]
struct Holder {
    text: String,
    pid: Option<u32>,
    host: Option<String>,
    age: Option<Duration>,
}

impl Holder {
    /// `None` when the lock vanished meanwhile.
    fn read(lock: &Path) -> Option<Holder> {
        let text = match fs::read_to_string(lock) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => String::new(),
        };
        let mut pid = None;
        let mut host = None;
        let mut since = None;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next()) {
                (Some("pid"), Some(v)) => pid = v.parse().ok(),
                (Some("host"), Some(v)) => host = Some(v.to_owned()),
                (Some("since"), Some(v)) => {
                    since = v
                        .parse::<u64>()
                        .ok()
                        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
                }
                // the format before host and start time were recorded: the pid alone
                (Some(v), None) if pid.is_none() => pid = v.parse().ok(),
                _ => {}
            }
        }
        let since = since.or_else(|| fs::metadata(lock).and_then(|m| m.modified()).ok());
        let age = since.and_then(|t| SystemTime::now().duration_since(t).ok());
        Some(Holder {
            text,
            pid,
            host,
            age,
        })
    }

    /// Whether the holder process still runs: `None` when that cannot be told (no pid
    /// recorded, another host, no `/proc`).
    fn alive(&self) -> Option<bool> {
        let pid = self.pid?;
        if self.host.as_ref().is_some_and(|h| *h != hostname()) {
            return None;
        }
        if !Path::new("/proc/self").exists() {
            return None;
        }
        Some(Path::new("/proc").join(pid.to_string()).exists())
    }

    /// Why the lock is abandoned, if it is.
    fn stale(&self) -> Option<String> {
        if self.alive() == Some(false) {
            return Some(format!(
                "was left by pid {}, which is no longer running",
                self.pid.unwrap_or_default()
            ));
        }
        match self.age {
            Some(a) if a > STALE_LOCK => Some(format!(
                "is {} s old ({}; a writer holds it for milliseconds, the bound is {} s)",
                a.as_secs(),
                self.describe(),
                STALE_LOCK.as_secs()
            )),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let who = match (&self.pid, &self.host) {
            (Some(p), Some(h)) => format!("held by pid {p} on {h}"),
            (Some(p), None) => format!("held by pid {p}"),
            _ => "holder not recorded".to_owned(),
        };
        match self.age {
            Some(a) => format!("{who}, created {} s ago", a.as_secs()),
            None => who,
        }
    }
}

/// Remove the abandoned lock described by `h`, unless another writer replaced it meanwhile
/// (the lock is renamed aside first and compared). Returns whether it was removed.
fn take_over(lock: &Path, h: &Holder) -> bool {
    let aside = unique_sibling(lock, "stale");
    if fs::rename(lock, &aside).is_err() {
        return false;
    }
    let same = fs::read_to_string(&aside).is_ok_and(|t| t == h.text);
    if !same {
        // a live writer's fresh lock: put it back unless someone created one since
        let _ = fs::hard_link(&aside, lock);
    }
    let _ = fs::remove_file(&aside);
    same
}

struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
