//! Test harness: a fresh folder per test, fixtures made with the ffmpeg CLI, the ctxd binary,
//! and an independent view of the results (ffprobe, ffmpeg's own RGB decode).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("ctxd-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Makes `name` with `ffmpeg -y -v error <args> <name>`.
    pub fn ffmpeg(&self, name: &str, args: &[&str]) -> PathBuf {
        let out = self.path(name);
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-y", "-v", "error"])
            .args(args)
            .arg(&out)
            .status()
            .expect("ffmpeg must be installed (scripts/setup)");
        assert!(status.success(), "ffmpeg failed making {name}: {args:?}");
        out
    }

    /// Files left in the folder (to check nothing half-written stays behind).
    pub fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// lavfi inputs for a test pattern with an optional tone.
pub fn pattern(size: &str, rate: &str, seconds: f64) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate={rate}:duration={seconds}"),
    ]
}

pub fn tone(seconds: f64, rate: u32) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:sample_rate={rate}:duration={seconds}"),
    ]
}

pub fn args(parts: &[&[String]], tail: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    v.extend(tail.iter().map(|s| s.to_string()));
    v
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn ctxd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ctxd"));
    // Nothing from the user's home: no inversion cache (a test that wants one sets
    // CTXD_CACHE_DIR), and the test run's own optimized-model cache (a test about that cache
    // sets CTXD_ORT_CACHE).
    c.env_remove("CTXD_LOG")
        .env("CTXD_ORT_CACHE", ort_cache())
        .env("CTXD_CACHE_DIR", "off")
        .stdin(Stdio::null());
    c
}

/// One optimized-model cache for the whole test run, as a user's ctxd keeps one: after the
/// first process, every ctxd loads the shipped bundles without optimizing them again (on two
/// cores that was about a fifth of the integration tests' CPU time). A folder per run, so
/// temporary bundles' entries do not pile up: earlier runs' folders go when no process of
/// theirs is left.
fn ort_cache() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ort-cache");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let alive = e
                .file_name()
                .to_str()
                .is_some_and(|pid| Path::new("/proc").join(pid).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("the test run's optimized-model cache");
        dir
    })
    .as_path()
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run ctxd");
    assert!(
        out.status.success(),
        "ctxd failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; returns (exit code, stderr).
pub fn run_err(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run ctxd");
    assert!(!out.status.success(), "ctxd should have failed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn probe(path: &Path) -> Value {
    let out = run_ok(ctxd().arg("probe").arg(path));
    serde_json::from_slice(&out.stdout).expect("probe prints JSON")
}

/// ffprobe's view: streams and format.
pub fn ffprobe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn streams_of(v: &Value, kind: &str) -> Vec<Value> {
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == kind)
        .cloned()
        .collect()
}

/// Presentation times (seconds) of every video frame, in order, as ffprobe reads them.
pub fn frame_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=best_effort_timestamp_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

/// Every frame as RGB24, decoded and auto-rotated by the ffmpeg CLI (not by ctxd).
pub fn rgb_frames(path: &Path) -> (u32, u32, Vec<u8>) {
    let v = ffprobe(path);
    let video = &streams_of(&v, "video")[0];
    let (mut w, mut h) = (
        video["width"].as_u64().unwrap() as u32,
        video["height"].as_u64().unwrap() as u32,
    );
    let rotated = video["side_data_list"]
        .as_array()
        .map(|l| {
            l.iter().any(|s| {
                s["rotation"]
                    .as_i64()
                    .map(|r| r.abs() % 180 == 90)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false);
    if rotated {
        std::mem::swap(&mut w, &mut h);
    }
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-vsync",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    (w, h, out.stdout)
}

/// Mean absolute difference of two equally long byte buffers (frames), in levels.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.len() as f64
}

pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "frame data sizes differ");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// The real clips: in `$CTXD_SHARED_MEDIA` when it is set (only there), else
/// `../shared/media` beside the checkout, else `/work/shared/media`; None when this machine
/// has none of them (a clone elsewhere).
pub fn shared_media(name: &str) -> Option<PathBuf> {
    let candidates = match std::env::var_os("CTXD_SHARED_MEDIA") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/media"),
            PathBuf::from("/work/shared/media"),
        ],
    };
    candidates
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real clip `name` where this machine has it, else a stand-in made here with FFmpeg of
/// the same size, rate and length (H.264 in MP4, moving content): the tests that use it run
/// everywhere, never pass by skipping.
pub fn real_clip(d: &Dir, name: &str) -> PathBuf {
    if let Some(p) = shared_media(name) {
        return p;
    }
    let (size, rate, seconds) = match name {
        "car-turn.mp4" => ("480x480", "10", 8.0),
        "man-surfing.mp4" => ("656x656", "24", 3.0),
        other => panic!("no stand-in for {other}"),
    };
    eprintln!("note: {name} not found (set CTXD_SHARED_MEDIA); using a generated stand-in");
    d.ffmpeg(
        &format!("standin-{name}"),
        &strs(&args(
            &[&pattern(size, rate, seconds)],
            &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4"],
        )),
    )
}

pub fn ratio(s: &Value) -> f64 {
    let t = s.as_str().unwrap_or("0/1");
    let (n, d) = t.split_once('/').unwrap_or((t, "1"));
    let (n, d): (f64, f64) = (n.parse().unwrap_or(0.0), d.parse().unwrap_or(1.0));
    if d == 0.0 {
        0.0
    } else {
        n / d
    }
}

/// The exact discrete DDIM map of the Gaussian oracle (x0 ~ N(mu, sigma2 I), eps* exact),
/// x_out = P x_in + Q mu, for `steps` leading-spaced steps of a scaled-linear schedule,
/// derived here by hand and independently of ctxd's schedule and sampler code:
/// - the schedule: abar_t = prod_{i <= t} (1 - beta_i), beta on a line in sqrt space;
///   timesteps t_k = k (T / steps) + offset; below t = 0 the final alpha (abar_0 unless
///   `set_alpha_to_one`);
/// - sampling, t -> p: with w = x - sqrt(abar) mu, one step multiplies w by
///   g = (sigma2 sqrt(a_p a_t) + sqrt((1 - a_p)(1 - a_t))) / (a_t sigma2 + 1 - a_t), so
///   P = prod g and Q = sqrt(a_end) - sqrt(a_start) P;
/// - inversion, c -> t (eps* evaluated at t on x_c): x_t = A x_c + B mu with
///   k = sqrt(1 - a_t) / (a_t sigma2 + 1 - a_t), m = sqrt(1 - a_t) - sqrt(a_t (1 - a_c) / a_c),
///   A = sqrt(a_t / a_c) + m k and B = -m k sqrt(a_t), composed step by step.
pub fn ddim_affine(
    cfg: &ctxd::model::manifest::ScheduleConfig,
    steps: usize,
    invert: bool,
    sigma2: f64,
) -> (f64, f64) {
    use ctxd::model::manifest::{BetaSchedule, TimestepSpacing};
    assert_eq!(
        cfg.beta_schedule,
        BetaSchedule::ScaledLinear,
        "derived for scaled_linear"
    );
    assert_eq!(
        cfg.timestep_spacing,
        TimestepSpacing::Leading,
        "derived for leading"
    );
    assert!(!cfg.rescale_zero_terminal_snr);
    let n = cfg.train_steps;
    let (b0, b1) = (cfg.beta_start.sqrt(), cfg.beta_end.sqrt());
    let mut abar = Vec::with_capacity(n);
    let mut prod = 1.0f64;
    for i in 0..n {
        let beta = (b0 + (b1 - b0) * i as f64 / (n - 1) as f64).powi(2);
        prod *= 1.0 - beta;
        abar.push(prod);
    }
    let final_alpha = if cfg.set_alpha_to_one { 1.0 } else { abar[0] };
    let ratio = n / steps;
    let level = |t: i64| if t < 0 { final_alpha } else { abar[t as usize] };
    let ts: Vec<i64> = (0..steps)
        .map(|k| (k * ratio + cfg.steps_offset) as i64)
        .collect();
    if !invert {
        let mut p = 1.0;
        for &t in ts.iter().rev() {
            let (a_t, a_p) = (level(t), level(t - ratio as i64));
            p *= (sigma2 * (a_p * a_t).sqrt() + ((1.0 - a_p) * (1.0 - a_t)).sqrt())
                / (a_t * sigma2 + 1.0 - a_t);
        }
        let (a_start, a_end) = (level(*ts.last().unwrap()), final_alpha);
        return (p, a_end.sqrt() - a_start.sqrt() * p);
    }
    let (mut p, mut q) = (1.0f64, 0.0f64);
    for &t in &ts {
        let (a_t, a_c) = (level(t), level(t - ratio as i64));
        let k = (1.0 - a_t).sqrt() / (a_t * sigma2 + 1.0 - a_t);
        let m = (1.0 - a_t).sqrt() - (a_t * (1.0 - a_c) / a_c).sqrt();
        let (a, b) = ((a_t / a_c).sqrt() + m * k, -m * k * a_t.sqrt());
        (p, q) = (a * p, a * q + b);
    }
    (p, q)
}
