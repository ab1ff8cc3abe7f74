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
    // No optimized-model or inversion cache in the user's home: a test that wants one sets
    // CTXD_ORT_CACHE or CTXD_CACHE_DIR.
    c.env_remove("CTXD_LOG")
        .env("CTXD_ORT_CACHE", "off")
        .env("CTXD_CACHE_DIR", "off")
        .stdin(Stdio::null());
    c
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

/// The real clips: `$CTXD_SHARED_MEDIA`, else `../shared/media` beside the checkout, else
/// `/work/shared/media`. None when this machine has none of them (a clone elsewhere): the
/// tests that use them then say so and skip.
pub fn shared_media(name: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CTXD_SHARED_MEDIA").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/media")),
        Some(PathBuf::from("/work/shared/media")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("note: {name} not found (set CTXD_SHARED_MEDIA); skipping the real-clip check");
    }
    found
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

/// DDIM on the oracle is affine per element: x = P x_start + Q mu. (P, Q) follow the same
/// recursion as the sampler, computed here in f64 with the schedule alone.
pub fn ddim_affine(sched: &ctxd::diffusion::Schedule, invert: bool, sigma2: f64) -> (f64, f64) {
    let (mut p, mut q) = (1.0f64, 0.0f64);
    let mut ts = sched.timesteps().to_vec();
    if invert {
        ts.reverse();
    }
    for t in ts {
        let a_t = sched.abar_of(t);
        // The other end of the step: prev when sampling, cur when inverting.
        let a_n = sched.abar_of(t - sched.ratio());
        let coef = (1.0 - a_t).sqrt() / (a_t * sigma2 + 1.0 - a_t);
        // eps = coef (x - sqrt(a_t) mu) = coef p x_s + coef (q - sqrt(a_t)) mu
        let (ep, eq) = (coef * p, coef * (q - a_t.sqrt()));
        if invert {
            // x0 = (x - sqrt(1 - a_c) eps) / sqrt(a_c); x' = sqrt(a_t) x0 + sqrt(1 - a_t) eps
            let a_c = a_n;
            let (x0p, x0q) = (
                (p - (1.0 - a_c).sqrt() * ep) / a_c.sqrt(),
                (q - (1.0 - a_c).sqrt() * eq) / a_c.sqrt(),
            );
            p = a_t.sqrt() * x0p + (1.0 - a_t).sqrt() * ep;
            q = a_t.sqrt() * x0q + (1.0 - a_t).sqrt() * eq;
        } else {
            let a_p = a_n;
            let (x0p, x0q) = (
                (p - (1.0 - a_t).sqrt() * ep) / a_t.sqrt(),
                (q - (1.0 - a_t).sqrt() * eq) / a_t.sqrt(),
            );
            p = a_p.sqrt() * x0p + (1.0 - a_p).sqrt() * ep;
            q = a_p.sqrt() * x0q + (1.0 - a_p).sqrt() * eq;
        }
    }
    (p, q)
}
