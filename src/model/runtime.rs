//! ONNX Runtime: one process-wide environment, sessions with the requested execution
//! provider. `auto` tries CUDA and falls back to CPU with one log line saying why; `cuda[:N]`
//! is a requirement and fails when CUDA cannot be had.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use serde::Serialize;

use super::error::{ModelError, Result};
use super::ort_cache;

/// Where networks run, as the user asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    Cpu,
    Cuda(i32),
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "unknown device '{s}' (expected cpu, auto, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Auto => f.write_str("auto"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether an edit's stages work on different windows at once (decode the next while the
/// UNet inverts this one and edits the one before), each stage then with a share of the
/// cores, or take one window at a time through the networks, each stage with every core
/// (decoding the input and writing the output overlap them either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pipelining {
    /// Off on a CPU host of fewer than four cores, else on (`Pipelining::resolve`).
    #[default]
    Auto,
    On,
    Off,
}

impl Pipelining {
    /// Whether the stages overlap on this host. On two cores overlapped stages get one core
    /// each, and one window at a time through the networks with both cores per stage was as
    /// fast or faster and held less: the oracle bundle's 3-s 640x360 edit 1.1x faster at 0.56x
    /// the peak, the tiny bundle's at 128 px 1.1-1.4x faster at 0.69x, the tiny bundle at
    /// 64 px (`ctxd bench pipeline`) 0.97-1.03x (README, performance). Four cores and more,
    /// and CUDA, keep the overlap; unmeasured here, so `ctxd bench pipeline` reports its gain.
    pub fn resolve(self, device: Device) -> bool {
        match self {
            Pipelining::On => true,
            Pipelining::Off => false,
            Pipelining::Auto => {
                let cores = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1);
                cores >= 4 || matches!(device, Device::Cuda(_))
            }
        }
    }
}

impl FromStr for Pipelining {
    type Err = String;

    fn from_str(s: &str) -> Result<Pipelining, String> {
        match s {
            "auto" => Ok(Pipelining::Auto),
            "on" => Ok(Pipelining::On),
            "off" => Ok(Pipelining::Off),
            _ => Err(format!(
                "unknown pipelining '{s}' (expected auto, on or off)"
            )),
        }
    }
}

/// Where a session actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Cpu => f.write_str("cpu"),
            Provider::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub device: Device,
    /// Threads inside one operator (ONNX Runtime's default: one per core).
    pub intra_threads: Option<usize>,
    /// Threads across independent operators.
    pub inter_threads: Option<usize>,
    /// From this size of UNet weights on, an edit's invert and edit stages share one session
    /// (None: `$CTXD_SHARED_UNET_BYTES`, else 1 GiB; see `pipeline::graph::StageModels`).
    pub share_unet_from: Option<u64>,
    /// Folder for ONNX Runtime's optimized models on CPU (None: optimize at every load). See
    /// [`default_optimized_cache`](super::ort_cache::default_optimized_cache).
    pub optimized_cache: Option<PathBuf>,
    /// Whether an edit's stages overlap (`Pipelining::resolve`).
    pub pipelining: Pipelining,
    /// Let ONNX Runtime plan memory reuse when it builds a CPU session, as it does by default
    /// (false: ctxd turns that quadratic planning off, see `reuse_plan`; `CTXD_ORT_MEM_REUSE=1`
    /// turns it back on for every session).
    pub plan_memory_reuse: bool,
}

impl RuntimeOptions {
    /// These options with the optimized-model cache where the user's environment puts it.
    pub fn with_default_cache(mut self) -> RuntimeOptions {
        self.optimized_cache = ort_cache::default_optimized_cache();
        self
    }
}

/// How a CPU session was built (the daemon's /metrics counts each kind).
#[derive(Clone, Copy)]
enum Build {
    /// From the optimized-model cache, without optimizing again.
    Cached = 0,
    /// Optimized, and the result saved to the cache.
    Saved = 1,
    /// Optimized with no cache (none configured, or the model could not be saved).
    Uncached = 2,
}

/// Per [`Build`]: a count and a total of microseconds.
static BUILDS: [(AtomicU64, AtomicU64); 3] = [
    (AtomicU64::new(0), AtomicU64::new(0)),
    (AtomicU64::new(0), AtomicU64::new(0)),
    (AtomicU64::new(0), AtomicU64::new(0)),
];

/// The labels of [`build_stats`]' rows, in [`Build`]'s order.
pub const BUILD_KINDS: [&str; 3] = ["cached", "saved", "uncached"];

/// Per kind of [`BUILD_KINDS`]: CPU sessions built so far and the seconds they took
/// (for the daemon's /metrics: seconds / count is the mean cold load of each kind).
pub fn build_stats() -> [(u64, f64); 3] {
    std::array::from_fn(|i| {
        (
            BUILDS[i].0.load(Ordering::Relaxed),
            BUILDS[i].1.load(Ordering::Relaxed) as f64 / 1e6,
        )
    })
}

fn count_build(kind: Build, since: Instant) {
    let (n, us) = &BUILDS[kind as usize];
    n.fetch_add(1, Ordering::Relaxed);
    us.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// Turns a status from ONNX Runtime's C API into a `Result`, releasing it.
pub(crate) fn ort_status(status: ort::sys::OrtStatusPtr) -> std::result::Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API; its message lives until it is released.
    let msg = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, after its message was copied.
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(msg)
}

/// Whether CPU sessions allocate from the environment's shared arena ([`share_cpu_arena`]).
static SHARED_ARENA: AtomicBool = AtomicBool::new(false);

pub(crate) fn environment() -> Result<Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = ort::init()
            .with_name("ctxd")
            .build()
            .map_err(|e| e.to_string())?;
        match share_cpu_arena(&env) {
            Ok(()) => SHARED_ARENA.store(true, Ordering::Relaxed),
            Err(e) => tracing::debug!("each session keeps its own CPU arena: {e}"),
        }
        Ok(env)
    })
    .clone()
    .map_err(|cause| ModelError::Device {
        device: "cpu".into(),
        cause: format!("ONNX Runtime did not start: {cause} (run scripts/setup)"),
    })
}

/// Registers one CPU arena with the environment, growing by what is asked and no more, for
/// every CPU session to allocate from. By default each session keeps its own arena and grows
/// it by powers of two: the stages' sessions (two UNets, two adapters, the VAEs) each held
/// their own high-water mark, rounded up, so a 512-px window's 75 MB tensors cost 128 MB
/// chunks per session. Shared, the arena holds what the stages use at the same time.
fn share_cpu_arena(env: &Environment) -> std::result::Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    use std::ffi::c_char;

    let api = ort::api();
    let check = ort_status;
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| e.to_string())?;
    let keys: [*const c_char; 1] = [c"arena_extend_strategy".as_ptr()];
    let values: [usize; 1] = [1]; // kSameAsRequested
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: keys and values have one entry each and outlive the call; cfg is written by it.
    check(unsafe { (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), 1, &mut cfg) })?;
    // SAFETY: env and info are live; the environment copies what it needs from cfg, which is
    // released right after.
    let registered =
        check(unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg) });
    // SAFETY: cfg was created above and is not used after this.
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    registered
}

/// Opens `path` (whose weights are in `external`, when it names a file) as a session on the
/// requested device.
///
/// # Errors
/// `Load` when ONNX Runtime rejects the file; `Device` when CUDA was required and cannot be had.
pub fn open_session(
    path: &Path,
    external: Option<&Path>,
    opts: &RuntimeOptions,
) -> Result<(Session, Provider)> {
    let env = environment()?;
    let load_err = |e: ort::Error| ModelError::Load {
        path: path.to_path_buf(),
        cause: e.to_string(),
    };
    // Level3 everywhere, except for a model the cache already optimized (Disable).
    let builder_at =
        |level: GraphOptimizationLevel| -> Result<ort::session::builder::SessionBuilder> {
            let mut b = Session::builder(&env)
                .map_err(load_err)?
                .with_optimization_level(level)
                .map_err(|e| load_err(e.into()))?;
            if let Some(n) = opts.intra_threads {
                b = b.with_intra_threads(n).map_err(|e| load_err(e.into()))?;
            }
            if let Some(n) = opts.inter_threads {
                b = b.with_inter_threads(n).map_err(|e| load_err(e.into()))?;
            }
            // No spinning: ONNX Runtime's pool threads otherwise busy-wait between operators,
            // and a stage graph holds several pools (invert, edit, the VAEs) on the same cores.
            // Measured on 2 cores: the tiny UNet's guided step 762 -> 652 ms, a tiny edit's
            // CPU seconds 9-15 % fewer, `bench pipeline` 18 % fewer CPU seconds for the same
            // wall time. `CTXD_ORT_SPINNING=1` brings it back (dedicated cores, latency first).
            let spinning = std::env::var("CTXD_ORT_SPINNING").as_deref() == Ok("1");
            b = b
                .with_intra_op_spinning(spinning)
                .map_err(|e| load_err(e.into()))?;
            if SHARED_ARENA.load(Ordering::Relaxed) {
                // No memory patterns: a pattern is one block per input shape holding all of
                // a run's intermediates, which a shared arena (that never gives memory back)
                // would keep for every window shape; tensor by tensor, freed chunks are
                // reused across shapes and sessions. Measured: the oracle bundle's 512-px
                // windows peak 0.24 GB lower (1.25 GB before both changes, 0.97 after); the
                // demo bundle's edits 11 % lower and within 1 % of the time; the tiny
                // bundle's many small tensors cost about 5 % more time in ONNX Runtime.
                b = b.with_env_allocators().map_err(|e| load_err(e.into()))?;
                b = b
                    .with_memory_pattern(false)
                    .map_err(|e| load_err(e.into()))?;
            }
            Ok(b)
        };
    let builder = || builder_at(GraphOptimizationLevel::Level3);
    let cuda = |n: i32| -> std::result::Result<Session, String> {
        let b = builder().map_err(|e| e.to_string())?;
        let mut b = b
            .with_execution_providers([ep::CUDA::default()
                .with_device_id(n)
                .build()
                .error_on_failure()])
            .map_err(|e| e.to_string())?;
        b.commit_from_file(path).map_err(|e| e.to_string())
    };
    // CPU sessions plan no static memory reuse: see reuse_plan.rs (the arena reuses buffers).
    let cpu_builder_at = |level: GraphOptimizationLevel| {
        builder_at(level).map(|mut b| {
            if !opts.plan_memory_reuse {
                super::reuse_plan::turn_off(&mut b);
            }
            b
        })
    };
    let cpu_builder = || cpu_builder_at(GraphOptimizationLevel::Level3);
    // CPU: a cached optimized model loads without optimizing again; a miss optimizes as
    // always and saves the result (to a temporary name, renamed, so concurrent loads never
    // read half a file). Any failure of the cache falls back to the plain load.
    let cpu = || -> Result<Session> {
        let since = Instant::now();
        let Some(cached) = opts
            .optimized_cache
            .as_deref()
            .and_then(|dir| ort_cache::optimized_path(dir, path, external))
        else {
            let s = cpu_builder()?.commit_from_file(path).map_err(load_err)?;
            count_build(Build::Uncached, since);
            return Ok(s);
        };
        if cached.is_file() {
            match cpu_builder_at(GraphOptimizationLevel::Disable)
                .and_then(|mut b| b.commit_from_file(&cached).map_err(load_err))
            {
                Ok(s) => {
                    ort_cache::mark_used(&cached, external.is_some());
                    count_build(Build::Cached, since);
                    return Ok(s);
                }
                Err(e) => tracing::debug!("optimized model {}: {e}", cached.display()),
            }
        }
        let dir = cached.parent().unwrap_or(Path::new("."));
        // Unique per process and per load: two stages of one job may load the same UNet at once.
        static LOADS: AtomicU64 = AtomicU64::new(0);
        let name = cached.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(
            ".{name}.{}-{}.tmp",
            std::process::id(),
            LOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let saved = std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let builder = cpu_builder().map_err(|e| e.to_string())?;
                match external {
                    None => ort_cache::save_optimized(builder, path, &tmp, &cached),
                    Some(_) => ort_cache::save_with_external_weights(builder, path, &tmp, &cached),
                }
            });
        match saved {
            Ok(s) => {
                ort_cache::tidy_after_save(&cached);
                count_build(Build::Saved, since);
                Ok(s)
            }
            Err(e) => {
                tracing::debug!("not caching the optimized {}: {e}", path.display());
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_dir_all(&tmp);
                let s = cpu_builder()?.commit_from_file(path).map_err(load_err)?;
                count_build(Build::Uncached, since);
                Ok(s)
            }
        }
    };
    match opts.device {
        Device::Cpu => Ok((cpu()?, Provider::Cpu)),
        Device::Cuda(n) => match cuda(n) {
            Ok(s) => Ok((s, Provider::Cuda(n))),
            Err(cause) => Err(ModelError::Device {
                device: format!("cuda:{n}"),
                cause: format!("CUDA is not available: {}", first_line(&cause)),
            }),
        },
        Device::Auto => match cuda(0) {
            Ok(s) => Ok((s, Provider::Cuda(0))),
            Err(cause) => {
                static SAID: AtomicBool = AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "using CPU: the CUDA execution provider did not register ({})",
                        first_line(&cause)
                    );
                }
                Ok((cpu()?, Provider::Cpu))
            }
        },
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network whose weights are an external file (the exporter's layout past 2 GB) is
    /// cached with its weights beside it, both moved into place only when whole, and the next
    /// load reads them instead of optimizing again; the outputs do not change.
    #[test]
    fn a_network_with_external_weights_is_cached_with_them() {
        use std::os::unix::fs::MetadataExt;
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/external_weights.onnx");
        let data = model.with_file_name("external_weights.onnx.data");
        let cache = tempfile::tempdir().unwrap();
        let cached = RuntimeOptions {
            device: Device::Cpu,
            optimized_cache: Some(cache.path().to_path_buf()),
            ..Default::default()
        };
        let plain = RuntimeOptions {
            device: Device::Cpu,
            ..Default::default()
        };
        let x =
            ndarray::Array2::from_shape_fn((3, 64), |(i, j)| ((i * 7 + j) % 13) as f32 / 6.5 - 1.0);
        let run = |opts: &RuntimeOptions| -> Vec<f32> {
            let (mut s, _) = open_session(&model, Some(&data), opts).unwrap();
            let out = s
                .run(ort::inputs!["x" => ort::value::Tensor::from_array(x.clone()).unwrap()])
                .unwrap();
            out["y"]
                .try_extract_array::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        };
        let want = run(&plain);
        assert!(want.iter().any(|&v| v > 0.0));
        // An older version of the same file's entry goes when the new one is saved; another
        // file's entry stays.
        let name =
            super::super::ort_cache::optimized_path(cache.path(), &model, Some(&data)).unwrap();
        let name = name.file_name().unwrap().to_str().unwrap();
        let (prefix, _) = name
            .strip_suffix(".onnx")
            .unwrap()
            .rsplit_once('-')
            .unwrap();
        let old = format!("{prefix}-{}.onnx", "0".repeat(32));
        let other = format!("{}-{}.onnx", &prefix[..prefix.len() - 1], "0".repeat(32));
        let old_naming = format!("external_weights-{}.onnx", "1".repeat(32));
        for f in [
            old.clone(),
            format!("{old}.data"),
            other.clone(),
            old_naming,
        ] {
            std::fs::write(cache.path().join(f), b"stale").unwrap();
        }
        let first = run(&cached);
        assert!(cache.path().join(&other).exists());
        std::fs::remove_file(cache.path().join(&other)).unwrap();
        let names = super::super::ort_cache::tests::names_in(cache.path());
        assert_eq!(
            names.len(),
            2,
            "a graph and its weights, nothing temporary: {names:?}"
        );
        assert!(names[0].starts_with("external_weights-") && names[0].ends_with(".onnx"));
        assert_eq!(names[1], format!("{}.data", names[0]));
        let graph = cache.path().join(&names[0]);
        let saved = std::fs::metadata(&graph).unwrap().ino();
        let second = run(&cached);
        assert_eq!(
            std::fs::metadata(&graph).unwrap().ino(),
            saved,
            "the second load was served by the cache, not saved again"
        );
        for got in [&first, &second] {
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "{err}");
        }
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:2".parse::<Device>(), Ok(Device::Cuda(2)));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().unwrap_err().contains("gpu"));
    }

    #[test]
    fn pipelining_parses_and_auto_follows_the_host() {
        assert_eq!("on".parse::<Pipelining>(), Ok(Pipelining::On));
        assert_eq!("off".parse::<Pipelining>(), Ok(Pipelining::Off));
        assert_eq!("auto".parse::<Pipelining>(), Ok(Pipelining::Auto));
        assert!("yes".parse::<Pipelining>().unwrap_err().contains("yes"));
        assert!(Pipelining::On.resolve(Device::Cpu));
        assert!(!Pipelining::Off.resolve(Device::Cuda(0)));
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Pipelining::Auto.resolve(Device::Cpu), cores >= 4);
        assert_eq!(Pipelining::Auto.resolve(Device::Auto), cores >= 4);
        assert!(
            Pipelining::Auto.resolve(Device::Cuda(1)),
            "a GPU keeps the overlap"
        );
    }
}
