//! ONNX Runtime's optimized models on disk (CPU): a session built from a model file saves the
//! graph level-3 optimization made of it here, and later loads read that instead of optimizing
//! again. Entries are keyed by everything the optimized graph depends on; a new version of a
//! file replaces its old entry, and entries no load has used for [`UNUSED_DAYS`] days (their
//! bundle deleted, a temporary bundle's) go when a new entry is saved.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ort::session::Session;

/// Where optimized models are kept: `$CTXD_ORT_CACHE` (`off` or empty: nowhere), else
/// `$XDG_CACHE_HOME/ctxd/ort`, else `~/.cache/ctxd/ort`.
pub fn default_optimized_cache() -> Option<PathBuf> {
    crate::cache::user_cache_dir("CTXD_ORT_CACHE", "ort")
}

/// Optimizes `path` (weights inside) into the cache: written to `tmp`, then renamed to
/// `cached`. A failed rename loses the cache entry, not the load.
pub(super) fn save_optimized(
    builder: ort::session::builder::SessionBuilder,
    path: &Path,
    tmp: &Path,
    cached: &Path,
) -> std::result::Result<Session, String> {
    let session = builder
        .with_optimized_model_path(tmp)
        .map_err(|e| e.to_string())?
        .commit_from_file(path)
        .map_err(|e| e.to_string())?;
    if let Err(e) = std::fs::rename(tmp, cached) {
        tracing::debug!("optimized model {}: {e}", cached.display());
        let _ = std::fs::remove_file(tmp);
    }
    Ok(session)
}

/// Optimizes `path` into the cache for a network whose weights are an external file (past
/// 2 GB, which one ONNX file cannot hold): the optimized graph at `cached` and its weights
/// beside it (`<cached>.data`, the name the graph refers to). Both are written in the private
/// folder `work`, then the weights and last the graph are moved into place, so a load that
/// finds the graph finds its weights whole.
pub(super) fn save_with_external_weights(
    builder: ort::session::builder::SessionBuilder,
    path: &Path,
    work: &Path,
    cached: &Path,
) -> std::result::Result<Session, String> {
    let (Some(dir), Some(name)) = (cached.parent(), cached.file_name()) else {
        return Err(format!("{}: no folder", cached.display()));
    };
    let data = format!("{}.data", name.to_string_lossy());
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    let session = builder
        .with_optimized_model_path(work.join(name))
        .map_err(|e| e.to_string())?
        .with_config_entry(
            "session.optimized_model_external_initializers_file_name",
            &data,
        )
        .map_err(|e| e.to_string())?
        .with_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            "4096",
        )
        .map_err(|e| e.to_string())?
        .commit_from_file(path)
        .map_err(|e| e.to_string())?;
    std::fs::rename(work.join(&data), dir.join(&data))
        .and_then(|()| std::fs::rename(work.join(name), cached))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir(work);
    Ok(session)
}

/// The cache's file for the optimized `path` (and `external`, its weights, when it has them):
/// `<stem>-<source>-<key>.onnx`, where `source` names the file (its path), so a new version of
/// the same file can replace the entry of the old one ([`evict_older_versions`]), and `key`
/// everything the optimized graph depends on: the model file's identity (its canonical path,
/// size and modification time, and its weights file's, so an edited or replaced file misses),
/// ONNX Runtime's API level, the optimization level and this CPU: level 3 writes kernels chosen
/// for the CPU's instruction set (NCHWc layouts), which another CPU sharing the cache folder
/// (a home directory on NFS) might not run.
pub(super) fn optimized_path(dir: &Path, path: &Path, external: Option<&Path>) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let stamp = |p: &Path| -> Option<(u64, u128)> {
        let meta = std::fs::metadata(p).ok()?;
        let mtime = meta.modified().ok()?;
        let since = mtime.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some((meta.len(), since.as_nanos()))
    };
    let canon = path.canonicalize().ok()?;
    let mut h = Sha256::new();
    h.update(canon.to_string_lossy().as_bytes());
    let source: String = h.clone().finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (len, mtime) = stamp(&canon)?;
    h.update(len.to_le_bytes());
    h.update(mtime.to_le_bytes());
    if let Some(data) = external {
        let (len, mtime) = stamp(data)?;
        h.update(b"external");
        h.update(len.to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    h.update(ort::MINOR_VERSION.to_le_bytes());
    h.update(b"cpu level3");
    h.update(cpu_identity().as_bytes());
    let digest = h.finalize();
    let key: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    Some(dir.join(format!("{stem}-{source}-{key}.onnx")))
}

/// Removes the cache's entries (graph and weights) for other versions of the file `cached`
/// was made from: the same stem and source, another key. A re-export or an ONNX Runtime
/// upgrade would otherwise leave the old entry behind for good, 3.6 GB for an SD-size UNet.
fn evict_older_versions(cached: &Path) {
    let (Some(dir), Some(name)) = (cached.parent(), cached.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let Some((prefix, _)) = name.strip_suffix(".onnx").and_then(|n| n.rsplit_once('-')) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // Entries named before the source was part of the name (`<stem>-<key>.onnx`) are never
    // read again: they go too.
    let stem = prefix.rsplit_once('-').map(|(stem, _)| stem);
    let is_key = |k: &str| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit());
    let key_after = |other: &str, head: Option<&str>| -> bool {
        head.and_then(|h| other.strip_prefix(h))
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| {
                r.strip_suffix(".onnx.data")
                    .or_else(|| r.strip_suffix(".onnx"))
            })
            .is_some_and(is_key)
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(other) = file.to_str() else { continue };
        let older = key_after(other, Some(prefix)) || key_after(other, stem);
        if older && !other.starts_with(name) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::debug!("optimized model {}: {e}", entry.path().display());
            }
        }
    }
}

/// Entries no load has read for this many days are removed when a new entry is saved.
pub const UNUSED_DAYS: u64 = 30;

/// Marks the entry at `cached` (and its weights file, when `external`) as read now, so
/// [`sweep_unused`] keeps it: the modification time is the last use.
pub(super) fn mark_used(cached: &Path, external: bool) {
    let data = external.then(|| PathBuf::from(format!("{}.data", cached.display())));
    for file in std::iter::once(cached).chain(data.as_deref()) {
        if let Ok(f) = std::fs::File::options().append(true).open(file) {
            if let Err(e) = f.set_modified(SystemTime::now()) {
                tracing::debug!("optimized model {}: {e}", file.display());
            }
        }
    }
}

/// After a new entry at `cached` is saved: its file's older versions go
/// ([`evict_older_versions`]), and so does whatever no load has read for [`UNUSED_DAYS`].
pub(super) fn tidy_after_save(cached: &Path) {
    evict_older_versions(cached);
    let Some(dir) = cached.parent() else { return };
    let swept = sweep_unused(dir, Duration::from_secs(UNUSED_DAYS * 24 * 3600));
    if swept > 0 {
        tracing::debug!("optimized models: {swept} files unused for {UNUSED_DAYS} days removed");
    }
}

/// Removes from `dir` the entries (a graph and its `.data` weights together) and the leftover
/// temporary files of crashed saves that nothing has used for `max_unused`. Returns how many
/// files went. Only ctxd's own names are touched: other files in the folder stay.
fn sweep_unused(dir: &Path, max_unused: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let unused = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_unused)
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let go = if let Some(graph) = name.strip_suffix(".data") {
            // Weights go with their graph: when it went, or when both are unused.
            graph.ends_with(".onnx")
                && {
                    let graph = dir.join(graph);
                    !graph.exists() || unused(&graph)
                }
                && unused(&path)
        } else {
            let ours = (name.starts_with('.') && name.ends_with(".tmp")) || name.ends_with(".onnx");
            ours && unused(&path)
        };
        if go {
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!("optimized model {}: {e}", path.display()),
            }
        }
    }
    removed
}

/// The CPU's model name and feature flags as the kernel reports them (empty where there is no
/// /proc/cpuinfo).
fn cpu_identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        format!("{}|{}", field("model name"), field("flags"))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The names in `dir`, sorted.
    pub(in crate::model) fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_cpu_is_part_of_the_optimized_models_key() {
        let id = cpu_identity();
        if std::path::Path::new("/proc/cpuinfo").exists() {
            assert!(id.len() > 10 && id.contains('|'), "{id}");
        }
    }

    /// Entries nobody read for the limit go, each graph with its weights; an entry a load just
    /// read stays however old its file, weights stay while their graph is used, and files that
    /// are not the cache's are left alone.
    #[test]
    fn unused_entries_are_swept_and_used_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let long_ago = SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
        let files = [
            ("gone-aa-1.onnx", true),
            ("gone-aa-1.onnx.data", true),
            ("orphan-bb-2.onnx.data", true),
            (".unet-cc-3.onnx.77-0.tmp", true),
            ("fresh-dd-4.onnx", false),
            ("fresh-dd-4.onnx.data", true),
            ("read-ee-5.onnx", true),
            ("read-ee-5.onnx.data", true),
            ("notes.txt", true),
        ];
        for (name, old) in files {
            std::fs::write(at(name), b"x").unwrap();
            if old {
                let f = std::fs::File::options()
                    .append(true)
                    .open(at(name))
                    .unwrap();
                f.set_modified(long_ago).unwrap();
            }
        }
        mark_used(&at("read-ee-5.onnx"), true);
        let limit = Duration::from_secs(UNUSED_DAYS * 24 * 3600);
        assert_eq!(sweep_unused(dir.path(), limit), 4);
        assert_eq!(
            names_in(dir.path()),
            [
                "fresh-dd-4.onnx",
                "fresh-dd-4.onnx.data",
                "notes.txt",
                "read-ee-5.onnx",
                "read-ee-5.onnx.data"
            ]
        );
        assert_eq!(sweep_unused(&dir.path().join("missing"), limit), 0);
    }
}
