//! A persistent, content-addressed disk cache of successful NVRTC compiles.
//!
//! One NVRTC + ptxas compile of a generated kernel costs hundreds of milliseconds; a kernel
//! that was compiled once (by this process or an earlier one) is never compiled again: like
//! Triton's and FlexAttention's kernel caches, the PTX, the CUBIN and NVRTC's log (which holds
//! the ptxas `-v` report) are kept on disk, one small file per compile.
//!
//! **Key**: SHA-256 of the cache format version, the source text, the kernel name, the full
//! NVRTC option list (architecture, include path, `-std`, ptxas flags, extra options), the
//! NVRTC version, whether cudarc resolved to the toolchain's library, the libnvrtc path, size
//! and modification time, and the size and modification time of the CUDA headers the prelude
//! includes (`cuda_fp16.h`, `cuda_bf16.h`, ...). Reinstalling the toolchain therefore misses.
//!
//! **Location** ([`KernelCache::from_env`]): `$ATTNFORGE_KERNEL_CACHE` if set (the value `off`
//! disables the cache), else `$XDG_CACHE_HOME/attnforge/kernels`, else
//! `$HOME/.cache/attnforge/kernels`, else no cache. Entries live at
//! `<dir>/<2 hex>/<64 hex>.afk`; deleting the folder clears the cache ([`KernelCache::clear`]).
//!
//! **Safety**: an entry is written to a temporary file in its shard folder and renamed into
//! place, so a reader never sees a partial file; every entry carries its key, its section
//! lengths and a SHA-256 of its contents, so a truncated, corrupted or foreign file is
//! detected, recompiled and overwritten, never trusted. A missing or read-only folder only
//! means every lookup misses and every store is skipped: compiling never fails because of the
//! cache. Compile errors are not cached.
//!
//! ```no_run
//! use attnforge_runtime::{Arch, CompileOptions, Compiler, KernelCache};
//! let src = r#"extern "C" __global__ void k(float* o) { o[threadIdx.x] = 1.0f; }"#;
//! let cache = KernelCache::at("/tmp/my-kernel-cache");
//! let c = Compiler::global()?.compile_cached(&cache, src, "k", &CompileOptions::new(Arch::Sm90))?;
//! println!("hit: {}, lookup {:?}", c.from_cache, c.cache_lookup);
//! # Ok::<(), attnforge_runtime::CompileError>(())
//! ```

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Environment variable naming the cache folder; the value `off` disables the cache.
pub const KERNEL_CACHE_ENV: &str = "ATTNFORGE_KERNEL_CACHE";

/// Version of the key derivation and the entry layout; bumping it invalidates every entry.
pub const KERNEL_CACHE_FORMAT: u32 = 1;

/// File name extension of a cache entry.
const ENTRY_EXT: &str = "afk";
/// First bytes of every entry.
const MAGIC: &[u8; 8] = b"AFKCACHE";
/// Fixed-size header: magic, format, key, nvrtc major/minor, compile time (ns), has-cubin,
/// and the three section lengths.
const HEADER_LEN: usize = 8 + 4 + 32 + 4 + 4 + 8 + 1 + 8 + 8 + 8;
/// Trailing SHA-256 of everything before it.
const CHECKSUM_LEN: usize = 32;

/// The 256-bit key of one compile (see the module documentation for what it covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key as 64 lower-case hex digits (also the entry's file name).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Everything besides source, name and options that decides what NVRTC produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompilerFingerprint {
    /// `(major, minor)` of the NVRTC library.
    pub nvrtc_version: (i32, i32),
    /// Whether cudarc's calls go to the toolchain's library (a system library otherwise).
    pub uses_toolchain_library: bool,
    /// `path`, size and modification time (ns since the epoch) of libnvrtc and of the CUDA
    /// headers, one line each; a file that cannot be read is recorded as missing.
    pub files: String,
}

impl CompilerFingerprint {
    /// Fingerprints the given files (stat only: size and modification time).
    pub fn new(nvrtc_version: (i32, i32), uses_toolchain_library: bool, files: &[PathBuf]) -> Self {
        let mut s = String::new();
        for f in files {
            match fs::metadata(f) {
                Ok(m) => {
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    s.push_str(&format!("{} {} {}\n", f.display(), m.len(), mtime));
                }
                Err(_) => s.push_str(&format!("{} missing\n", f.display())),
            }
        }
        Self {
            nvrtc_version,
            uses_toolchain_library,
            files: s,
        }
    }
}

/// The key of compiling `source` as kernel `name` with the full NVRTC `options` by the
/// compiler described by `fp`. Every field is length-prefixed, so no two inputs collide by
/// concatenation.
pub fn cache_key(
    source: &str,
    name: &str,
    options: &[String],
    fp: &CompilerFingerprint,
) -> CacheKey {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"attnforge-kernel-cache");
    field(&KERNEL_CACHE_FORMAT.to_le_bytes());
    field(source.as_bytes());
    field(name.as_bytes());
    field(&(options.len() as u64).to_le_bytes());
    for o in options {
        field(o.as_bytes());
    }
    field(&fp.nvrtc_version.0.to_le_bytes());
    field(&fp.nvrtc_version.1.to_le_bytes());
    field(&[u8::from(fp.uses_toolchain_library)]);
    field(fp.files.as_bytes());
    CacheKey(h.finalize().into())
}

/// The stored result of one successful compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// PTX text.
    pub ptx: String,
    /// CUBIN bytes, when the compile produced one.
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log (holds the ptxas `-v` report).
    pub log: String,
    /// `(major, minor)` of the NVRTC that compiled it.
    pub nvrtc_version: (i32, i32),
    /// Wall time of the original compile.
    pub compile_time: Duration,
}

impl CacheEntry {
    /// Serialises the entry for `key` (header, sections, trailing SHA-256).
    pub fn encode(&self, key: &CacheKey) -> Vec<u8> {
        let cubin: &[u8] = self.cubin.as_deref().unwrap_or(&[]);
        let mut v = Vec::with_capacity(
            HEADER_LEN + self.ptx.len() + cubin.len() + self.log.len() + CHECKSUM_LEN,
        );
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&KERNEL_CACHE_FORMAT.to_le_bytes());
        v.extend_from_slice(&key.0);
        v.extend_from_slice(&self.nvrtc_version.0.to_le_bytes());
        v.extend_from_slice(&self.nvrtc_version.1.to_le_bytes());
        let ns = u64::try_from(self.compile_time.as_nanos()).unwrap_or(u64::MAX);
        v.extend_from_slice(&ns.to_le_bytes());
        v.push(u8::from(self.cubin.is_some()));
        for len in [self.ptx.len(), cubin.len(), self.log.len()] {
            v.extend_from_slice(&(len as u64).to_le_bytes());
        }
        debug_assert_eq!(v.len(), HEADER_LEN);
        v.extend_from_slice(self.ptx.as_bytes());
        v.extend_from_slice(cubin);
        v.extend_from_slice(self.log.as_bytes());
        let sum = Sha256::digest(&v);
        v.extend_from_slice(&sum);
        v
    }

    /// Parses and verifies an entry read for `key`: magic, format, key, exact length,
    /// checksum and UTF-8 of the text sections. `None` for anything else.
    pub fn decode(bytes: &[u8], key: &CacheKey) -> Option<CacheEntry> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return None;
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let mut r = Reader(body);
        if r.take(8)? != MAGIC
            || u32::from_le_bytes(r.array()?) != KERNEL_CACHE_FORMAT
            || r.take(32)? != key.0
        {
            return None;
        }
        let major = i32::from_le_bytes(r.array()?);
        let minor = i32::from_le_bytes(r.array()?);
        let ns = u64::from_le_bytes(r.array()?);
        let has_cubin = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let mut lens = [0usize; 3];
        for l in &mut lens {
            *l = usize::try_from(u64::from_le_bytes(r.array()?)).ok()?;
        }
        let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l))?;
        if r.0.len() != total || (!has_cubin && lens[1] != 0) {
            return None;
        }
        if Sha256::digest(body).as_slice() != sum {
            return None;
        }
        let ptx = std::str::from_utf8(r.take(lens[0])?).ok()?.to_owned();
        let cubin = r.take(lens[1])?;
        let log = std::str::from_utf8(r.take(lens[2])?).ok()?.to_owned();
        Some(CacheEntry {
            ptx,
            cubin: has_cubin.then(|| cubin.to_vec()),
            log,
            nvrtc_version: (major, minor),
            compile_time: Duration::from_nanos(ns),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// Where compiled kernels are kept: a folder, or nowhere (disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

static GLOBAL: OnceLock<KernelCache> = OnceLock::new();
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl KernelCache {
    /// A cache in `dir` (created on the first store).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every lookup misses, nothing is written.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// The cache the process environment selects (see the module documentation).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// [`KernelCache::from_env`] with the variables read through `var` (for tests and for
    /// callers with their own environment): `ATTNFORGE_KERNEL_CACHE` (`off` disables),
    /// `XDG_CACHE_HOME`, `HOME`. Empty values count as unset; `XDG_CACHE_HOME` must be
    /// absolute, as the XDG specification requires.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        if let Some(v) = get(KERNEL_CACHE_ENV) {
            if v.to_str()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("off"))
            {
                return Self::disabled();
            }
            return Self::at(v);
        }
        if let Some(x) = get("XDG_CACHE_HOME").map(PathBuf::from) {
            if x.is_absolute() {
                return Self::at(x.join("attnforge").join("kernels"));
            }
        }
        match get("HOME") {
            Some(h) => Self::at(PathBuf::from(h).join(".cache/attnforge/kernels")),
            None => Self::disabled(),
        }
    }

    /// The process-wide cache, [`KernelCache::from_env`] read once.
    pub fn global() -> &'static KernelCache {
        GLOBAL.get_or_init(KernelCache::from_env)
    }

    /// The folder, or `None` when disabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether lookups and stores happen at all.
    pub fn is_enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// Path of the entry for `key` (`None` when disabled).
    pub fn entry_path(&self, key: &CacheKey) -> Option<PathBuf> {
        let hex = key.hex();
        Some(
            self.dir
                .as_ref()?
                .join(&hex[..2])
                .join(format!("{hex}.{ENTRY_EXT}")),
        )
    }

    /// The verified entry for `key`, or `None` (disabled, absent, unreadable or invalid).
    pub fn load(&self, key: &CacheKey) -> Option<CacheEntry> {
        let bytes = fs::read(self.entry_path(key)?).ok()?;
        CacheEntry::decode(&bytes, key)
    }

    /// Stores `entry` under `key` atomically (temporary file + rename, replacing any old or
    /// corrupt entry). Returns whether it was written; failures are silent by design.
    pub fn store(&self, key: &CacheKey, entry: &CacheEntry) -> bool {
        let Some(path) = self.entry_path(key) else {
            return false;
        };
        let Some(shard) = path.parent() else {
            return false;
        };
        if fs::create_dir_all(shard).is_err() {
            return false;
        }
        let tmp = shard.join(format!(
            ".{}.{}.{}.tmp",
            key.hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&entry.encode(key)));
        if written.is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
            return false;
        }
        true
    }

    /// Deletes every entry (the whole folder). A missing folder is not an error.
    pub fn clear(&self) -> std::io::Result<()> {
        match &self.dir {
            Some(d) => match fs::remove_dir_all(d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Paths of the entries currently stored (temporary files excluded), sorted.
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Some(dir) = &self.dir else { return out };
        let Ok(shards) = fs::read_dir(dir) else {
            return out;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                let is_entry = p.extension().is_some_and(|e| e == ENTRY_EXT)
                    && !f.file_name().to_string_lossy().starts_with('.');
                if is_entry {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        CacheEntry {
            ptx: ".version 8.0\n.entry k".to_owned(),
            cubin: Some(vec![0x7f, b'E', b'L', b'F', 1, 2, 3]),
            log: "ptxas info    : Used 8 registers".to_owned(),
            nvrtc_version: (12, 9),
            compile_time: Duration::from_millis(412),
        }
    }

    fn fp() -> CompilerFingerprint {
        CompilerFingerprint {
            nvrtc_version: (12, 9),
            uses_toolchain_library: true,
            files: "/lib/libnvrtc.so.12 1 2\n".to_owned(),
        }
    }

    #[test]
    fn encode_decode_round_trip_and_rejects_damage() {
        let key = cache_key("src", "k", &["-a".to_owned()], &fp());
        let e = entry();
        let bytes = e.encode(&key);
        assert_eq!(CacheEntry::decode(&bytes, &key), Some(e.clone()));
        let none = CacheEntry {
            cubin: None,
            ..e.clone()
        };
        assert_eq!(CacheEntry::decode(&none.encode(&key), &key), Some(none));
        for cut in [0, 1, HEADER_LEN, bytes.len() - 1] {
            assert_eq!(CacheEntry::decode(&bytes[..cut], &key), None, "cut {cut}");
        }
        for i in [0, 9, 20, HEADER_LEN - 1, HEADER_LEN + 3, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            assert_eq!(CacheEntry::decode(&b, &key), None, "flipped byte {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(CacheEntry::decode(&longer, &key), None);
        let other = cache_key("src2", "k", &["-a".to_owned()], &fp());
        assert_eq!(CacheEntry::decode(&bytes, &other), None);
    }

    #[test]
    fn key_covers_every_input() {
        let o = vec!["-a".to_owned(), "-b".to_owned()];
        let base = cache_key("s", "k", &o, &fp());
        assert_eq!(base, cache_key("s", "k", &o, &fp()));
        assert_ne!(base, cache_key("s ", "k", &o, &fp()));
        assert_ne!(base, cache_key("s", "k2", &o, &fp()));
        assert_ne!(base, cache_key("s", "k", &o[..1], &fp()));
        assert_ne!(base, cache_key("s", "k", &["-a-b".to_owned()], &fp()));
        let mut f = fp();
        f.nvrtc_version = (12, 8);
        assert_ne!(base, cache_key("s", "k", &o, &f));
        let mut f = fp();
        f.uses_toolchain_library = false;
        assert_ne!(base, cache_key("s", "k", &o, &f));
        let mut f = fp();
        f.files = "/lib/libnvrtc.so.12 1 3\n".to_owned();
        assert_ne!(base, cache_key("s", "k", &o, &f));
        // Concatenation does not collide.
        assert_ne!(
            cache_key("ab", "c", &o, &fp()),
            cache_key("a", "bc", &o, &fp())
        );
        assert_eq!(base.hex().len(), 64);
    }

    #[test]
    fn location_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(*v))
            }
        };
        assert_eq!(
            KernelCache::from_vars(vars(&[
                (KERNEL_CACHE_ENV, "/x/kc"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u")
            ]))
            .dir(),
            Some(Path::new("/x/kc"))
        );
        assert!(!KernelCache::from_vars(vars(&[
            (KERNEL_CACHE_ENV, "off"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/u")
        ]))
        .is_enabled());
        assert!(!KernelCache::from_vars(vars(&[(KERNEL_CACHE_ENV, "OFF")])).is_enabled());
        assert_eq!(
            KernelCache::from_vars(vars(&[
                (KERNEL_CACHE_ENV, ""),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u")
            ]))
            .dir(),
            Some(Path::new("/xdg/attnforge/kernels"))
        );
        assert_eq!(
            KernelCache::from_vars(vars(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")])).dir(),
            Some(Path::new("/home/u/.cache/attnforge/kernels"))
        );
        assert!(!KernelCache::from_vars(vars(&[])).is_enabled());
    }

    #[test]
    fn store_load_clear_in_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let c = KernelCache::at(tmp.path().join("c"));
        let key = cache_key("s", "k", &[], &fp());
        assert_eq!(c.load(&key), None);
        assert!(c.store(&key, &entry()));
        assert_eq!(c.load(&key), Some(entry()));
        assert_eq!(c.entries(), vec![c.entry_path(&key).unwrap()]);
        c.clear().unwrap();
        assert_eq!(c.load(&key), None);
        c.clear().unwrap();
        let off = KernelCache::disabled();
        assert!(!off.store(&key, &entry()));
        assert_eq!(off.load(&key), None);
        assert!(off.entries().is_empty());
    }
}
