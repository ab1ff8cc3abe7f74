//! The inversion cache: a window's DDIM-inverted latents, kept on disk so a second edit of
//! the same content (another prompt over an archive, a rerun, a copy of a clip) skips the
//! inversion, which costs about as much as the edit itself.
//!
//! - The key (made by `pipeline::inversion_key`) covers everything the inversion depends on:
//!   the decoded frames up to the window, the bundle's files, the inversion prompt and
//!   settings, the processing size and the window plan. A hit is bit-identical to a recompute.
//! - Entries are compressed and checksummed (`entry`); one that fails a check is logged,
//!   removed and recomputed.
//! - Writes are atomic (temporary name, rename), so processes sharing the folder never read a
//!   torn entry; a reader that loses a race with eviction sees a miss.
//! - The total size is capped; the least recently used entries (by modification time, set on
//!   every hit) go first.
//!
//! Layout: `<dir>/<first two hex digits>/<key>.inv`.

pub mod entry;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use entry::Inverted;

/// 20 GiB: about 40 hours of 512x512 video at 25 steps, without trajectories.
pub const DEFAULT_MAX_BYTES: u64 = 20 << 30;
const SUFFIX: &str = "inv";
/// A temporary file older than this was left by a killed writer.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What a run did with the cache (per job in its report; the process total in /metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    /// Entries that failed a check: removed and recomputed (also counted in `misses`).
    pub corrupt: u64,
    pub stored: u64,
    /// Entries that could not be written (full disk...): the run goes on without them.
    pub store_errors: u64,
    pub evicted: u64,
}

impl CacheCounts {
    pub fn add(&mut self, o: &CacheCounts) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.corrupt += o.corrupt;
        self.stored += o.stored;
        self.store_errors += o.store_errors;
        self.evicted += o.evicted;
    }
}

static TOTAL: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Everything this process did with inversion caches so far.
pub fn process_counts() -> CacheCounts {
    let v = |i: usize| TOTAL[i].load(Ordering::Relaxed);
    CacheCounts {
        hits: v(0),
        misses: v(1),
        corrupt: v(2),
        stored: v(3),
        store_errors: v(4),
        evicted: v(5),
    }
}

fn count(c: &mut CacheCounts, f: impl Fn(&mut CacheCounts)) {
    let mut one = CacheCounts::default();
    f(&mut one);
    c.add(&one);
    for (i, v) in [
        one.hits,
        one.misses,
        one.corrupt,
        one.stored,
        one.store_errors,
        one.evicted,
    ]
    .into_iter()
    .enumerate()
    {
        TOTAL[i].fetch_add(v, Ordering::Relaxed);
    }
}

/// One entry on disk.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub path: PathBuf,
    pub bytes: u64,
    /// Last written or hit.
    pub used: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub dir: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    /// Seconds since the least and the most recently used entry was used.
    pub oldest_use_age_s: Option<f64>,
    pub newest_use_age_s: Option<f64>,
}

/// What `prune` or `clear` removed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Removed {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct InversionCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// `$CTXD_CACHE_DIR` (`off` or empty: no cache), else `$XDG_CACHE_HOME/ctxd/inversions`, else
/// `~/.cache/ctxd/inversions`. `None` when caching is off or no home is known.
pub fn default_dir() -> Option<PathBuf> {
    user_cache_dir("CTXD_CACHE_DIR", "inversions")
}

/// A cache folder of ctxd's: `$<var>` (`off` or empty: none), else
/// `$XDG_CACHE_HOME/ctxd/<name>`, else `~/.cache/ctxd/<name>`; `None` when no home is known.
pub fn user_cache_dir(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var) {
        return (!v.is_empty() && v != "off").then(|| PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ctxd").join(name))
}

/// `$CTXD_CACHE_MAX` (a [`parse_size`] size), else [`DEFAULT_MAX_BYTES`].
pub fn max_from_env() -> u64 {
    match std::env::var("CTXD_CACHE_MAX") {
        Ok(v) => parse_size(&v).unwrap_or_else(|e| {
            tracing::warn!("CTXD_CACHE_MAX: {e}; using the default 20G");
            DEFAULT_MAX_BYTES
        }),
        Err(_) => DEFAULT_MAX_BYTES,
    }
}

/// `20G`, `512M`, `1.5T`, `1000000` (bytes): binary units, case-insensitive, optional `B`/`iB`.
///
/// # Errors
/// A message naming the value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (say 20G, 512M or a number of bytes)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

fn is_key(key: &str) -> bool {
    key.len() >= 16
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl InversionCache {
    /// Opens (creating) the cache folder.
    ///
    /// # Errors
    /// The folder cannot be created.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<InversionCache> {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("inversion cache {}: {e}", dir.display()))
        })?;
        Ok(InversionCache {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    /// The cache at [`default_dir`] with [`max_from_env`]; `None` (logged) when off or
    /// unusable.
    pub fn from_env() -> Option<InversionCache> {
        let dir = default_dir()?;
        match InversionCache::open(&dir, max_from_env()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("{e}; running without the inversion cache");
                None
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.{SUFFIX}"))
    }

    /// Whether an entry for `key` is there (not checked: `get` does that).
    pub fn contains(&self, key: &str) -> bool {
        is_key(key) && self.path(key).is_file()
    }

    /// The entry for `key`, if there is a sound one; a damaged one is removed (and counted).
    pub fn get(&self, key: &str, counts: &mut CacheCounts) -> Option<Inverted> {
        if !is_key(key) {
            count(counts, |c| c.misses += 1);
            return None;
        }
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("inversion cache: cannot read {}: {e}", path.display());
                }
                count(counts, |c| c.misses += 1);
                return None;
            }
        };
        match entry::decode(key, &bytes) {
            Ok(v) => {
                // Mark it used, for least-recently-used eviction.
                if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                count(counts, |c| c.hits += 1);
                Some(v)
            }
            Err(e) => {
                tracing::warn!(
                    "inversion cache: {} is corrupt ({e}); removed, recomputing",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                count(counts, |c| {
                    c.corrupt += 1;
                    c.misses += 1;
                });
                None
            }
        }
    }

    /// Stores `value` under `key` (atomically), then evicts down to the cap. A failure is
    /// logged and counted; the caller's run goes on.
    pub fn put(&self, key: &str, value: &Inverted, counts: &mut CacheCounts) {
        if !is_key(key) {
            return;
        }
        let path = self.path(key);
        let bytes = entry::encode(key, value);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::atomic::write_atomic(&path, &bytes));
        match written {
            Ok(()) => count(counts, |c| c.stored += 1),
            Err(e) => {
                tracing::warn!("inversion cache: cannot store {}: {e}", path.display());
                count(counts, |c| c.store_errors += 1);
                return;
            }
        }
        let removed = self.prune(self.max_bytes);
        if removed.entries > 0 {
            count(counts, |c| c.evicted += removed.entries);
        }
    }

    /// Every entry, and stale temporary files removed on the way.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut out = Vec::new();
        let Ok(top) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for sub in top.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let Ok(meta) = f.metadata() else { continue };
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".part") {
                    let age = SystemTime::now().duration_since(used).unwrap_or_default();
                    if age > STALE_TEMP {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
                if meta.is_file() && path.extension().is_some_and(|e| e == SUFFIX) {
                    out.push(EntryInfo {
                        path,
                        bytes: meta.len(),
                        used,
                    });
                }
            }
        }
        out
    }

    pub fn stats(&self) -> Stats {
        let entries = self.entries();
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
        Stats {
            dir: self.dir.clone(),
            entries: entries.len() as u64,
            bytes: entries.iter().map(|e| e.bytes).sum(),
            max_bytes: self.max_bytes,
            oldest_use_age_s: entries.iter().map(|e| e.used).min().map(age),
            newest_use_age_s: entries.iter().map(|e| e.used).max().map(age),
        }
    }

    /// Removes the least recently used entries until the total is at most `max_bytes`.
    pub fn prune(&self, max_bytes: u64) -> Removed {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut removed = Removed::default();
        if total <= max_bytes {
            return removed;
        }
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= max_bytes {
                break;
            }
            // Another process may have removed it first; either way it is gone.
            if std::fs::remove_file(&e.path).is_ok() {
                removed.entries += 1;
                removed.bytes += e.bytes;
            }
            total = total.saturating_sub(e.bytes);
        }
        removed
    }

    pub fn clear(&self) -> Removed {
        self.prune(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array5;

    fn value(v: f32) -> Inverted {
        Inverted {
            x_t: Array5::from_elem((1, 4, 2, 8, 8), v),
            trajectory: vec![],
            residuals: vec![],
        }
    }

    fn key(i: u8) -> String {
        format!("{i:02x}{}", "ab".repeat(31))
    }

    #[test]
    fn hit_miss_corrupt_and_lru_eviction() {
        let d = tempfile::tempdir().unwrap();
        let c = InversionCache::open(d.path(), u64::MAX).unwrap();
        let mut n = CacheCounts::default();
        assert!(c.get(&key(1), &mut n).is_none());
        c.put(&key(1), &value(1.0), &mut n);
        assert_eq!(c.get(&key(1), &mut n), Some(value(1.0)));
        assert_eq!((n.hits, n.misses, n.stored), (1, 1, 1));

        // Damage: detected, removed, counted; the next lookup is a plain miss.
        let path = c.path(&key(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&path, bytes).unwrap();
        assert!(c.get(&key(1), &mut n).is_none());
        assert_eq!(n.corrupt, 1);
        assert!(!path.exists());

        // Cap of a bit over two entries: storing a third evicts the least recently used.
        c.put(&key(2), &value(2.0), &mut n);
        let one = std::fs::metadata(c.path(&key(2))).unwrap().len();
        let c = InversionCache::open(d.path(), one * 2 + one / 2).unwrap();
        c.put(&key(3), &value(3.0), &mut n);
        let old = SystemTime::now() - Duration::from_secs(100);
        std::fs::File::options()
            .write(true)
            .open(c.path(&key(2)))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(c.path(&key(3)))
            .unwrap()
            .set_modified(old - Duration::from_secs(100))
            .unwrap();
        // A hit refreshes key 3, so key 2 is now the oldest.
        assert!(c.get(&key(3), &mut n).is_some());
        c.put(&key(4), &value(4.0), &mut n);
        assert_eq!(n.evicted, 1);
        assert!(
            !c.path(&key(2)).exists(),
            "the least recently used goes first"
        );
        assert!(c.path(&key(3)).exists() && c.path(&key(4)).exists());
        let s = c.stats();
        assert_eq!(s.entries, 2);
        assert_eq!(c.clear().entries, 2);
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").unwrap_err().contains("lots"));
        assert!(parse_size("-1G").is_err());
    }

    #[test]
    fn keys_that_are_not_hex_are_never_paths() {
        let d = tempfile::tempdir().unwrap();
        let c = InversionCache::open(d.path(), u64::MAX).unwrap();
        let mut n = CacheCounts::default();
        c.put("../../etc/passwd-and-more", &value(0.0), &mut n);
        assert!(c.get("../../etc/passwd-and-more", &mut n).is_none());
        assert_eq!(n.stored, 0);
    }
}
