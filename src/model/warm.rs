//! Sessions kept warm between the jobs of one long-running process (the daemon). Building a
//! session parses and optimises the whole graph (seconds for a real UNet, plus the weights'
//! upload on a GPU); a daemon doing that for every job spends its time loading. When a
//! [`Network`](super::Network) is dropped its session comes back here, and the next load of
//! the same file (same size and time) with the same options takes it.
//!
//! Off unless [`enable`] is called, so one-shot commands free their memory as they go. Idle
//! sessions are dropped by [`evict_idle`]; at most `per_key` idle sessions are kept per file
//! and options.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ort::session::Session;

use super::runtime::{Provider, RuntimeOptions};

/// Which sessions are interchangeable: the same file, unchanged, opened the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    options: String,
}

struct Idle {
    session: Session,
    provider: Provider,
    since: Instant,
}

struct Pool {
    per_key: usize,
    idle: HashMap<Key, Vec<Idle>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
/// Loads that found a warm session, and loads that built one, while pooling was on.
static REUSED: AtomicU64 = AtomicU64::new(0);
static BUILT: AtomicU64 = AtomicU64::new(0);

fn pool() -> std::sync::MutexGuard<'static, Option<Pool>> {
    crate::sync::lock(&POOL)
}

/// Keeps sessions warm from now on, at most `per_key` idle ones per file and options.
pub fn enable(per_key: usize) {
    let mut p = pool();
    match p.as_mut() {
        Some(p) => p.per_key = per_key.max(1),
        None => {
            *p = Some(Pool {
                per_key: per_key.max(1),
                idle: HashMap::new(),
            })
        }
    }
}

/// The key for `path` opened with `opts`, when pooling is on and the file can be read.
pub(crate) fn key(path: &Path, opts: &RuntimeOptions) -> Option<Key> {
    pool().as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    Some(Key {
        path: path.to_path_buf(),
        len: meta.len(),
        modified: meta.modified().ok(),
        options: format!("{opts:?}"),
    })
}

/// A warm session for `key`, if one is idle.
pub(crate) fn take(key: &Key) -> Option<(Session, Provider)> {
    let mut p = pool();
    let idle = p.as_mut()?.idle.get_mut(key).and_then(Vec::pop);
    let counter = if idle.is_some() { &REUSED } else { &BUILT };
    counter.fetch_add(1, Ordering::Relaxed);
    idle.map(|i| (i.session, i.provider))
}

/// (loads that reused a warm session, loads that built a new one) since pooling was enabled.
pub fn load_counts() -> (u64, u64) {
    (
        REUSED.load(Ordering::Relaxed),
        BUILT.load(Ordering::Relaxed),
    )
}

/// Returns a session after use (dropped when the pool is off or full for this key).
pub(crate) fn give_back(key: Key, session: Session, provider: Provider) {
    let mut p = pool();
    let Some(p) = p.as_mut() else {
        return;
    };
    let per_key = p.per_key;
    let list = p.idle.entry(key).or_default();
    if list.len() < per_key {
        list.push(Idle {
            session,
            provider,
            since: Instant::now(),
        });
    }
}

/// Drops sessions idle for longer than `max_idle`; returns how many.
pub fn evict_idle(max_idle: Duration) -> usize {
    let mut p = pool();
    let Some(p) = p.as_mut() else {
        return 0;
    };
    let mut dropped = 0;
    for list in p.idle.values_mut() {
        let before = list.len();
        list.retain(|i| i.since.elapsed() <= max_idle);
        dropped += before - list.len();
    }
    p.idle.retain(|_, l| !l.is_empty());
    dropped
}

/// Sessions idle in the pool now.
pub fn idle_count() -> usize {
    pool()
        .as_ref()
        .map_or(0, |p| p.idle.values().map(Vec::len).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bundle, Input, Kind};
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn a_dropped_network_is_reused_and_gives_the_same_answers() {
        enable(2);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/oracle");
        let bundle = Bundle::open(&dir).unwrap();
        // Options no other test uses, so this test's key is its own.
        let opts = RuntimeOptions {
            inter_threads: Some(3),
            ..Default::default()
        };
        let path = bundle.path_of(Kind::VaeDecoder).unwrap();
        let k = key(&path, &opts).unwrap();
        let latents = ArrayD::from_shape_fn(IxDyn(&[2, 4, 4, 4]), |i| (i[2] + i[3]) as f32 * 0.1);
        let run = |net: &mut crate::model::Network| {
            let name = net.inputs()[0].name.clone();
            net.run(vec![(name.as_str(), Input::F32(latents.clone()))])
                .unwrap()
        };
        let mut first = bundle.load(Kind::VaeDecoder, &opts).unwrap();
        let a = run(&mut first);
        drop(first);
        assert_eq!(
            pool().as_ref().unwrap().idle[&k].len(),
            1,
            "back in the pool"
        );
        let (reused, _) = load_counts();
        let mut second = bundle.load(Kind::VaeDecoder, &opts).unwrap();
        assert!(load_counts().0 > reused, "taken from the pool");
        assert!(pool()
            .as_ref()
            .unwrap()
            .idle
            .get(&k)
            .is_none_or(Vec::is_empty));
        assert_eq!(
            run(&mut second),
            a,
            "a warm session answers exactly like a new one"
        );
        drop(second);
        assert!(evict_idle(Duration::ZERO) >= 1);
        assert!(!pool().as_ref().unwrap().idle.contains_key(&k));
    }
}
