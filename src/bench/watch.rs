//! `ctxd bench watch`: jobs per minute through the daemon against `ctxd edit` run once per
//! clip in a loop (same clips, bundle, preset and machine, in the same run), and the daemon's
//! CPU use while idle.
//!
//! The clips are cut from one moving test pattern, so each has different content (the daemon
//! would rightly treat copies of one clip as a single job).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::harness::{WatchRoot, WatchSettings};

#[derive(Args, Debug)]
pub struct WatchBenchArgs {
    /// Bundle both runs use.
    #[arg(long, default_value = "models/oracle", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// How many clips.
    #[arg(long, default_value_t = 50)]
    pub clips: usize,
    /// Seconds per clip (10 fps, 160x120).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// DDIM steps per edit.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Jobs the daemon runs at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Run the daemon with `warm_minutes = 0` (models loaded for every job), to see what
    /// keeping them warm is worth.
    #[arg(long)]
    pub cold: bool,
    /// Seconds to watch the idle daemon's CPU time.
    #[arg(long, default_value_t = 20.0)]
    pub idle_seconds: f64,
    /// Keep the clips and outputs here (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct WatchBench {
    clips: usize,
    seconds_per_clip: f64,
    steps: usize,
    concurrency: usize,
    warm_models: bool,
    bundle: String,
    loop_s: f64,
    loop_jobs_per_min: f64,
    daemon_s: f64,
    daemon_jobs_per_min: f64,
    /// daemon jobs/min ÷ loop jobs/min.
    ratio: f64,
    idle_seconds: f64,
    /// CPU seconds per wall second while idle (1.0 = one core busy).
    idle_cpu_fraction: f64,
}

/// Cuts `n` clips of `seconds` each from one moving pattern into `dir`.
pub(crate) fn make_clips(dir: &Path, n: usize, seconds: f64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size=160x120:rate=10:duration={}",
            n as f64 * seconds
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-force_key_frames",
        ])
        .arg(format!("expr:gte(t,n_forced*{seconds})"))
        .args(["-f", "segment", "-segment_time"])
        .arg(seconds.to_string())
        .args(["-reset_timestamps", "1"])
        .arg(dir.join("clip-%03d.mp4"))
        .status()
        .context("running ffmpeg to cut benchmark clips (run scripts/setup)")?;
    if !status.success() {
        bail!("ffmpeg failed to cut clips into {}", dir.display());
    }
    let clips: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("clip-{i:03}.mp4")))
        .filter(|p| p.exists())
        .collect();
    if clips.len() != n {
        bail!("ffmpeg cut {} clips, not {n}", clips.len());
    }
    Ok(clips)
}

fn count_reports(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// utime + stime of `pid`, in seconds (Linux `/proc`).
///
/// # Errors
/// The process is gone or `/proc` cannot be read.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

pub fn watch(args: &WatchBenchArgs) -> Result<()> {
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let (exe, bundle, preset) = super::binary_bench_setup(&dir, &args.bundle, args.steps, 1.0, 96)?;
    let defaults = "source = \"a test pattern\"\n[[edit]]\nprompt = \"red\"\n";
    let clips = make_clips(&dir.join("clips"), args.clips, args.seconds)?;

    // Baseline: one `ctxd edit` process per clip.
    let loop_out = dir.join("loop-out");
    std::fs::create_dir_all(&loop_out)?;
    std::fs::write(dir.join("clips").join("_defaults.toml"), defaults)?;
    let started = Instant::now();
    for clip in &clips {
        let status = Command::new(&exe)
            .arg("edit")
            .arg(clip)
            .arg("--preset")
            .arg(&preset)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--out-dir")
            .arg(&loop_out)
            .args(["-q"])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("ctxd edit {} failed", clip.display());
        }
    }
    let loop_s = started.elapsed().as_secs_f64();

    // The daemon: started and ready before the clips arrive, then all of them moved in.
    let root = WatchRoot::create(
        &dir.join("daemon"),
        &WatchSettings {
            preset: &preset,
            bundle: &bundle,
            concurrency: args.concurrency,
            extra: &format!("warm_minutes = {}", if args.cold { 0 } else { 10 }),
        },
        defaults,
    )?;
    let (mut daemon, _) = root.start(&exe, None)?;
    let root = root.root.clone();
    let started = Instant::now();
    for clip in &clips {
        let name = clip.file_name().expect("clip name");
        std::fs::copy(clip, root.join(name))?;
        std::fs::rename(root.join(name), root.join("inbox").join(name))?;
    }
    let outbox = root.join("outbox");
    while count_reports(&outbox) < clips.len() {
        if count_reports(&root.join("failed")) > 0 || daemon.exited()?.is_some() {
            bail!("a daemon job failed: see {}", root.join("failed").display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let daemon_s = started.elapsed().as_secs_f64();

    // Idle: nothing to do; what does waiting cost?
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = cpu_seconds(daemon.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.idle_seconds));
    let idle_cpu_fraction = (cpu_seconds(daemon.pid())? - cpu0) / t0.elapsed().as_secs_f64();
    daemon.stop()?;

    let per_min = |s: f64| clips.len() as f64 * 60.0 / s;
    let r = WatchBench {
        clips: clips.len(),
        seconds_per_clip: args.seconds,
        steps: args.steps,
        concurrency: args.concurrency,
        warm_models: !args.cold,
        bundle: bundle.display().to_string(),
        loop_s,
        loop_jobs_per_min: per_min(loop_s),
        daemon_s,
        daemon_jobs_per_min: per_min(daemon_s),
        ratio: loop_s / daemon_s,
        idle_seconds: args.idle_seconds,
        idle_cpu_fraction,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} clips of {} s, {} steps, bundle {}",
            r.clips, r.seconds_per_clip, r.steps, r.bundle
        );
        println!(
            "  ctxd edit in a loop: {:>7.1} s  {:>6.1} jobs/min",
            r.loop_s, r.loop_jobs_per_min
        );
        println!(
            "  ctxd watch (x{}{}):  {:>7.1} s  {:>6.1} jobs/min   ratio {:.2}",
            r.concurrency,
            if r.warm_models { ", warm" } else { ", cold" },
            r.daemon_s,
            r.daemon_jobs_per_min,
            r.ratio
        );
        println!(
            "  idle daemon: {:.4} CPU-seconds per second over {} s",
            r.idle_cpu_fraction, r.idle_seconds
        );
    }
    Ok(())
}
