//! `ctxd bench stream`: what a stream costs and how it holds together, on generated content
//! that changes scene every few seconds (with a tone, for A/V sync):
//!
//! 1. Per anchor mode (rolling, first, none), the content read in real time (`--realtime`):
//!    sustained fps against `ctxd edit` on the same content in the same run, delay from reading a window to writing it (median, p99), and
//!    the change across window boundaries against the change inside windows (output, and the
//!    source's own for reference).
//! 2. A prompt change mid-stream: from the file's change to the window that took it, plus the
//!    output delay.
//! 3. A/V drift at the end of the output against the source's.
//! 4. Peak memory of a short and a long stream (child `ctxd stream` processes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::pipeline::stream::{self, StreamJob, StreamReport};
use crate::pipeline::stream_spec::{self, StreamSettings};
use crate::pipeline::windows::Anchor;

#[derive(Args, Debug)]
pub struct StreamBenchArgs {
    /// Bundle to edit with.
    #[arg(long, default_value = "models/oracle", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// Length of the content for throughput, delay and consistency (seconds).
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Seconds per scene of the generated content.
    #[arg(long, default_value_t = 6)]
    pub scene_seconds: u32,
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// What the content shows (the inversion prompt).
    #[arg(long, default_value = "a video")]
    pub source: String,
    /// The edit's prompt (the live run changes it once, to --prompt-after).
    #[arg(long, default_value = "a red video")]
    pub prompt: String,
    #[arg(long, default_value = "a blue video")]
    pub prompt_after: String,
    /// Guidance (default: the preset's).
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Processing short side.
    #[arg(long, default_value_t = 64)]
    pub short_side: u32,
    /// Lengths (minutes) of the two streams whose peak memory is compared.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2.0, 20.0])]
    pub memory_minutes: Vec<f64>,
    #[arg(long)]
    pub no_memory: bool,
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct AnchorRun {
    anchor: Anchor,
    fps: f64,
    /// Stream fps / `ctxd edit` fps on the same content.
    fps_vs_edit: f64,
    /// Output change across boundaries / inside windows (goal: at most 1.2).
    boundary_over_inside: Option<f64>,
    /// The same ratio in the source (scene cuts fall where they fall).
    source_boundary_over_inside: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Memory {
    short_minutes: f64,
    long_minutes: f64,
    short_peak_rss_mib: f64,
    long_peak_rss_mib: f64,
    ratio: f64,
    /// A/V drift at the end of the long stream's output.
    long_av_drift_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StreamBench {
    bundle: String,
    seconds: u32,
    frames: u64,
    edit_fps: f64,
    anchors: Vec<AnchorRun>,
    /// Real-time input: fps (capped by the input's rate) and delay from reading a window's
    /// first frame to writing the window.
    live_fps: f64,
    delay_median_s: f64,
    delay_p99_s: f64,
    dropped_windows: u64,
    /// From the prompt file's change to the window that took it.
    prompt_pickup_s: Option<f64>,
    /// Pickup plus the median output delay: when the change reaches the output.
    prompt_change_delay_s: Option<f64>,
    /// |(video end - audio end) of the output - the same of the source|, seconds.
    av_drift_s: Option<f64>,
    memory: Option<Memory>,
}

/// Content that changes scene every `scene` seconds: four lavfi sources in turn, 160x120 at
/// 10 fps, with a tone.
fn make_content(dir: &Path, seconds: u32, scene: u32) -> Result<PathBuf> {
    let path = dir.join(format!("scenes-{seconds}s.ts"));
    if path.exists() {
        return Ok(path);
    }
    let sources = [
        "testsrc2=size=160x120:rate=10",
        "mandelbrot=size=160x120:rate=10",
        "life=size=160x120:rate=10:mold=10:ratio=0.5",
        "smptehdbars=size=160x120:rate=10",
    ];
    let scenes = seconds.div_ceil(scene.max(1)) as usize;
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-y", "-v", "error"]);
    for i in 0..scenes {
        cmd.args(["-f", "lavfi", "-t", &scene.to_string(), "-i"])
            .arg(sources[i % sources.len()]);
    }
    let inputs: String = (0..scenes)
        .map(|i| format!("[{i}:v]format=yuv420p[v{i}];"))
        .collect();
    let chain: String = (0..scenes).map(|i| format!("[v{i}]")).collect();
    cmd.args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
        .arg("-filter_complex")
        .arg(format!("{inputs}{chain}concat=n={scenes}:v=1:a=0[v]"))
        .args(["-map", "[v]", "-map"])
        .arg(format!("{scenes}:a"))
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "20"])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(&path);
    let status = cmd
        .status()
        .context("running ffmpeg to make the benchmark content")?;
    if !status.success() {
        bail!("ffmpeg failed to make {}", path.display());
    }
    Ok(path)
}

/// Long content: one cycle of the four scenes, looped (stream copy) to `seconds`.
fn make_long(dir: &Path, seconds: u32, scene: u32) -> Result<PathBuf> {
    let path = dir.join(format!("long-{seconds}s.ts"));
    if path.exists() {
        return Ok(path);
    }
    let cycle = 4 * scene.max(1);
    let base = make_content(dir, cycle, scene)?;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-stream_loop"])
        .arg((seconds / cycle + 1).to_string())
        .arg("-i")
        .arg(&base)
        .args(["-t", &seconds.to_string(), "-c", "copy", "-f", "mpegts"])
        .arg(&path)
        .status()
        .context("running ffmpeg to loop the benchmark content")?;
    if !status.success() {
        bail!("ffmpeg failed to make {}", path.display());
    }
    Ok(path)
}

fn settings(args: &StreamBenchArgs, input: &Path, output: &Path, anchor: Anchor) -> StreamSettings {
    StreamSettings {
        input: input.display().to_string(),
        output: output.display().to_string(),
        prompt: Some(args.prompt.clone()),
        source: Some(args.source.clone()),
        guidance: args.guidance,
        bundle: Some(args.bundle.clone()),
        steps: Some(args.steps),
        window: Some(args.window),
        short_side: Some(args.short_side),
        anchor: Some(format!("{anchor:?}").to_lowercase()),
        lag: Some("wait".into()),
        // A live source: frames arrive at their own rate, so the delay is the pipeline's,
        // not a queue of frames read ahead.
        realtime: true,
        ..Default::default()
    }
}

fn job(s: &StreamSettings) -> Result<StreamJob> {
    stream_spec::build_job(
        s,
        &crate::cli::edit::home(),
        crate::model::RuntimeOptions::default(),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    )
}

fn ratio(t: &Option<crate::pipeline::report::Temporal>, source: bool) -> Option<f64> {
    t.as_ref().map(|t| {
        if source {
            t.source_boundary / t.source_inside.max(1e-9)
        } else {
            t.output_boundary / t.output_inside.max(1e-9)
        }
    })
}

/// Timestamp of the last video frame and of the last audio packet, seconds (ffprobe's
/// packet scan: container durations are estimates, or missing in Matroska).
fn av_ends(path: &Path) -> Result<Option<(f64, f64)>> {
    let last = |stream: &str| -> Result<Option<f64>> {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", stream])
            .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
            .arg(path)
            .output()
            .context("running ffprobe")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t)))))
    };
    Ok(match (last("v:0")?, last("a:0")?) {
        (Some(v), Some(a)) => Some((v, a)),
        _ => None,
    })
}

/// |(last video - last audio) of `out` - the same of `src`|, seconds.
fn drift(out: &Path, src: &Path) -> Result<Option<f64>> {
    Ok(match (av_ends(out)?, av_ends(src)?) {
        (Some((vo, ao)), Some((vs, as_))) => Some(((vo - ao) - (vs - as_)).abs()),
        _ => None,
    })
}

pub fn run(args: &StreamBenchArgs) -> Result<()> {
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let content = make_content(&dir, args.seconds, args.scene_seconds)?;

    // `ctxd edit` on the same content: the baseline.
    let edit_out = dir.join("edit.mkv");
    let mut ej = super::edit_job(
        &content,
        &args.bundle,
        &edit_out,
        args.steps,
        args.short_side,
        // What `ctxd edit` does on this host.
        crate::model::Pipelining::Auto,
    );
    ej.window = args.window;
    ej.context = crate::diffusion::ContextMode::Source;
    let edit = crate::pipeline::graph::run(&ej, &|_| {})?;
    let edit_fps = edit[0].frames as f64 / edit[0].wall_s;

    // Throughput and consistency: the content as fast as it goes, per anchor mode.
    let mut anchors = Vec::new();
    let mut frames = 0;
    for anchor in [Anchor::Rolling, Anchor::First, Anchor::None] {
        let out = dir.join(format!("stream-{anchor:?}.mkv").to_lowercase());
        let mut s = settings(args, &content, &out, anchor);
        s.realtime = false;
        let r: StreamReport = stream::run(job(&s)?)?;
        frames = r.frames;
        anchors.push(AnchorRun {
            anchor,
            fps: r.fps,
            fps_vs_edit: r.fps / edit_fps.max(1e-9),
            boundary_over_inside: ratio(&r.temporal, false),
            source_boundary_over_inside: ratio(&r.temporal, true),
        });
    }

    // Delay, a prompt change and A/V sync: the content read in real time, as a live source.
    let out = dir.join("stream-live.mkv");
    let prompt_file = dir.join("prompt.txt");
    std::fs::write(
        &prompt_file,
        format!("source: {}\n{}\n", args.source, args.prompt),
    )?;
    let mut s = settings(args, &content, &out, Anchor::Rolling);
    s.prompt = None;
    s.prompt_file = Some(prompt_file.clone());
    let j = job(&s)?;
    let status = j.status.clone();
    let after = format!("source: {}\n{}\n", args.source, args.prompt_after);
    let changer = std::thread::spawn(move || change_prompt_midway(&status, &prompt_file, &after));
    let live: StreamReport = stream::run(j)?;
    let _ = changer.join();
    let av_drift = drift(&out, &content)?;

    let memory = if args.no_memory {
        None
    } else {
        let [short, long] = args.memory_minutes[..] else {
            bail!("--memory-minutes takes two lengths, e.g. 2,20");
        };
        let rss = |minutes: f64| -> Result<(f64, Option<f64>)> {
            let seconds = (minutes * 60.0).round() as u32;
            let input = make_long(&dir, seconds, args.scene_seconds)?;
            let out = dir.join(format!("mem-{seconds}.ts"));
            let exe = std::env::current_exe()?;
            let child = Command::new(exe)
                .args(["-q", "stream", "-i"])
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .arg("--bundle")
                .arg(&args.bundle)
                .args(["--source", &args.source, "--prompt", &args.prompt])
                .args(["--steps", &args.steps.to_string()])
                .args(["--window", &args.window.to_string()])
                .args(["--short-side", &args.short_side.to_string()])
                .spawn()?;
            let rss = super::wait_rss(child.id() as libc::pid_t)?;
            Ok((rss, drift(&out, &input)?))
        };
        let ((a, _), (b, long_drift)) = (rss(short)?, rss(long)?);
        Some(Memory {
            short_minutes: short,
            long_minutes: long,
            short_peak_rss_mib: a,
            long_peak_rss_mib: b,
            ratio: b / a,
            long_av_drift_s: long_drift,
        })
    };

    let r = StreamBench {
        bundle: edit[0].bundle.name.clone(),
        seconds: args.seconds,
        frames,
        edit_fps,
        anchors,
        live_fps: live.fps,
        delay_median_s: live.delay.median_s,
        delay_p99_s: live.delay.p99_s,
        dropped_windows: live.dropped_windows,
        prompt_pickup_s: live.prompt.pickup_s,
        prompt_change_delay_s: live.prompt.pickup_s.map(|p| p + live.delay.median_s),
        av_drift_s: av_drift,
        memory,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "stream bench ({}, {} s of scene changes every {} s, {} frames, window {}, {} steps, short side {})",
        r.bundle, r.seconds, args.scene_seconds, r.frames, args.window, args.steps, args.short_side
    );
    println!("  ctxd edit on the same content: {:.2} fps", r.edit_fps);
    println!("  | anchor | fps | vs edit | boundary / inside (output) | (source) |");
    println!("  |---|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for a in &r.anchors {
        println!(
            "  | {:?} | {:.2} | {:.2}x | {} | {} |",
            a.anchor,
            a.fps,
            a.fps_vs_edit,
            f(a.boundary_over_inside),
            f(a.source_boundary_over_inside)
        );
    }
    println!(
        "  real-time input: {:.2} fps, delay median {:.2} s, p99 {:.2} s, {} windows dropped",
        r.live_fps, r.delay_median_s, r.delay_p99_s, r.dropped_windows
    );
    println!(
        "  prompt change: taken {} s after the file changed; in the output after {} s",
        f(r.prompt_pickup_s),
        f(r.prompt_change_delay_s)
    );
    println!("  A/V drift at the end: {} s", f(r.av_drift_s));
    if let Some(m) = &r.memory {
        println!(
            "  peak RSS: {} min stream {:.1} MiB, {} min stream {:.1} MiB, ratio {:.2}; A/V drift at the end of the long one {} s",
            m.short_minutes, m.short_peak_rss_mib, m.long_minutes, m.long_peak_rss_mib, m.ratio,
            f(m.long_av_drift_s)
        );
    }
    Ok(())
}

/// Changes the prompt once the stream has written three windows (or after a minute).
fn change_prompt_midway(status: &Mutex<stream::StreamStatus>, file: &Path, text: &str) {
    for _ in 0..600 {
        let s = crate::sync::lock(status).clone();
        if s.windows >= 3 || s.state.starts_with("eof") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::write(file, text);
}
