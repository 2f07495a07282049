//! The persistent tuning cache: one JSON file keyed by
//! `<canonical variant>|<arch>|<device>|<shape bucket>`; each entry holds the complete
//! [`KernelTuning`] (every candidate's result, so a cache entry explains why its winner won),
//! the codegen hash it was tuned with and a SHA-256 checksum of the entry.
//!
//! - stale (the codegen hash of the current candidate set differs) -> re-tuned;
//! - corrupt (unparsable file, or an entry whose checksum does not match) -> reported,
//!   never trusted, re-tuned; an unparsable file is kept aside as `<file>.corrupt`;
//! - concurrent writers: a lock file (`<file>.lock`, created exclusively) serialises
//!   writers; each writer re-reads the file under the lock, merges its entries, writes a
//!   temporary file and renames it over the cache (atomic on POSIX), so readers never see a
//!   partial file and no writer's entries are lost.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tuner::{hex, KernelTuning};

/// Format version of the file.
pub const FORMAT: u32 = 1;
/// Environment variable overriding the default cache path.
pub const CACHE_ENV: &str = "ATTNFORGE_TUNE_CACHE";
/// Default location, relative to the workspace root.
pub const DEFAULT_CACHE: &str = "target/attnforge-tune/cache.json";

/// A lock older than this is considered abandoned (a writer that crashed).
const STALE_LOCK: Duration = Duration::from_secs(120);
/// Longest wait for the lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

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

/// Cache errors (I/O, lock timeout).
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
    /// The lock was held too long.
    #[error("tuning cache lock `{0}` held for over {LOCK_TIMEOUT:?}; fix: remove it if no tuner is running")]
    LockTimeout(PathBuf),
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

    /// Read the file. Absent -> empty; unparsable -> empty with `corrupt` set.
    pub fn load(&self) -> Loaded {
        match fs::read_to_string(&self.path) {
            Err(_) => Loaded::default(),
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

    fn lock(&self) -> Result<LockGuard, CacheError> {
        let lock = self.path.with_extension("json.lock");
        let start = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(LockGuard(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let old = fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok());
                    if old.is_some_and(|a| a > STALE_LOCK) {
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    if start.elapsed() > LOCK_TIMEOUT {
                        return Err(CacheError::LockTimeout(lock));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Merge `tunings` into the file (under the lock, re-reading the file first; atomic
    /// rename). A corrupt file is kept aside as `<file>.corrupt` and replaced.
    pub fn store(&self, tunings: &[KernelTuning]) -> Result<(), CacheError> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir).map_err(|e| self.io(e))?;
            }
        }
        let _guard = self.lock()?;
        let loaded = self.load();
        if loaded.corrupt.is_some() {
            let _ = fs::rename(&self.path, self.path.with_extension("json.corrupt"));
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
        let tmp = self.path.with_extension(format!(
            "json.tmp.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let text = serde_json::to_string_pretty(&file).map_err(|e| self.io(e.into()))?;
        {
            let mut f = fs::File::create(&tmp).map_err(|e| self.io(e))?;
            f.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
            f.sync_all().map_err(|e| self.io(e))?;
        }
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))
    }
}

struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
