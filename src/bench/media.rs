//! `ctxd bench media`: the media layer measured against baselines run in the same process,
//! reported as ratios (wall-clock numbers alone mean little on a shared machine).
//!
//! 1. Throughput: ctxd's decode → RGB → encode against the `ffmpeg` CLI forced through the
//!    same RGB24 round trip (the fair comparison: same pixel formats, same swscale flags, same
//!    x264 settings, decoder and encoder threads left to FFmpeg's automatic choice on both
//!    sides, audio copied), and against the CLI's plain transcode, which converts nothing.
//! 2. Memory: peak RSS of `ctxd transcode` on a short and on a long input of the same kind;
//!    the ratio should stay near 1 (memory must not grow with length).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::{generate_clip, median, wait_rss, work_dir};
use crate::media::{transcode, EncodeSettings, InputSpec};

#[derive(Args, Debug)]
pub struct MediaBenchArgs {
    /// Video to use for the throughput run (default: a generated 720p clip with audio).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Length in seconds of the generated throughput clip.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Lengths in seconds of the two generated clips for the memory comparison.
    #[arg(long, value_delimiter = ',', default_values_t = vec![60, 600])]
    pub memory_seconds: Vec<u32>,
    /// Skip the memory comparison.
    #[arg(long)]
    pub no_memory: bool,
    /// Throughput rounds (ctxd and both CLI runs, interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// x264 preset for every encode (ctxd and ffmpeg alike).
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    #[arg(long, default_value_t = 23)]
    pub crf: u32,
    /// Folder for generated clips and outputs (default: a temporary folder, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Throughput {
    input: String,
    frames: u64,
    ctxd_fps: f64,
    ffmpeg_fps: f64,
    ffmpeg_rgb_fps: f64,
    /// ctxd / ffmpeg: 1.0 means as fast as the CLI.
    ratio_vs_ffmpeg: f64,
    ratio_vs_ffmpeg_rgb: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Memory {
    pub(super) short_seconds: u32,
    pub(super) long_seconds: u32,
    pub(super) short_peak_rss_mib: f64,
    pub(super) long_peak_rss_mib: f64,
    /// long / short: near 1.0 means memory does not grow with length.
    pub(super) ratio: f64,
}

#[derive(Debug, Serialize)]
struct MediaBench {
    preset: String,
    crf: u32,
    throughput: Throughput,
    memory: Option<Memory>,
}

pub fn media(args: &MediaBenchArgs) -> Result<()> {
    let (dir, _tmp) = work_dir(args.work_dir.as_deref())?;
    let input = match &args.input {
        Some(p) => p.clone(),
        None => generate_clip(&dir, args.seconds)?,
    };

    // ctxd, in process.
    let opts = transcode::TranscodeOptions {
        settings: EncodeSettings {
            codec: Some("h264".into()),
            crf: Some(args.crf),
            preset: Some(args.preset.clone()),
            pix_fmt: None,
            tune: None,
            gop: None,
            deflicker: None,
        },
        ..Default::default()
    };
    let out = dir.join("bench-ctxd.mp4");
    // Interleaved rounds and the median of each, so a burst of load elsewhere on a shared
    // machine does not land on one side only.
    let (mut ctxd, mut cli, mut cli_rgb, mut frames) = (vec![], vec![], vec![], 0);
    for _ in 0..args.rounds.max(1) {
        let t = Instant::now();
        let report = transcode::transcode(&InputSpec::File(input.clone()), &out, &opts)?;
        ctxd.push(t.elapsed().as_secs_f64());
        frames = report.frames;
        cli_rgb.push(time_ffmpeg(
            &input,
            &dir.join("bench-ffmpeg-rgb.mp4"),
            args,
            true,
        )?);
        cli.push(time_ffmpeg(
            &input,
            &dir.join("bench-ffmpeg.mp4"),
            args,
            false,
        )?);
    }
    let (ctxd_s, ffmpeg_s, ffmpeg_rgb_s) = (median(ctxd), median(cli), median(cli_rgb));
    let throughput = Throughput {
        input: input.display().to_string(),
        frames,
        ctxd_fps: frames as f64 / ctxd_s,
        ffmpeg_fps: frames as f64 / ffmpeg_s,
        ffmpeg_rgb_fps: frames as f64 / ffmpeg_rgb_s,
        ratio_vs_ffmpeg: ffmpeg_s / ctxd_s,
        ratio_vs_ffmpeg_rgb: ffmpeg_rgb_s / ctxd_s,
    };

    let memory = if args.no_memory {
        None
    } else {
        let [short, long] = args.memory_seconds[..] else {
            bail!("--memory-seconds takes two lengths, e.g. 60,600");
        };
        let a = generate_clip(&dir, short)?;
        let b = generate_clip(&dir, long)?;
        let rss_a = peak_rss_of_transcode(&a, &dir.join("mem-short.mp4"), args)?;
        let rss_b = peak_rss_of_transcode(&b, &dir.join("mem-long.mp4"), args)?;
        Some(Memory {
            short_seconds: short,
            long_seconds: long,
            short_peak_rss_mib: rss_a,
            long_peak_rss_mib: rss_b,
            ratio: rss_b / rss_a,
        })
    };

    let result = MediaBench {
        preset: args.preset.clone(),
        crf: args.crf,
        throughput,
        memory,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let t = &result.throughput;
        println!(
            "media bench (x264 preset {}, crf {})",
            result.preset, result.crf
        );
        println!("  input: {} ({} frames)", t.input, t.frames);
        println!("  ctxd decode→RGB→encode: {:>8.1} fps", t.ctxd_fps);
        println!(
            "  ffmpeg CLI, same path:  {:>8.1} fps   ratio ctxd/ffmpeg = {:.2}  (the fair comparison: rgb24 round trip, same swscale flags, same x264 settings, threads auto on both sides)",
            t.ffmpeg_rgb_fps, t.ratio_vs_ffmpeg_rgb
        );
        println!(
            "  ffmpeg CLI, no rgb24:   {:>8.1} fps   ratio ctxd/ffmpeg = {:.2}  (converts nothing; ctxd's networks need RGB)",
            t.ffmpeg_fps, t.ratio_vs_ffmpeg
        );
        if let Some(m) = &result.memory {
            println!(
                "  peak RSS: {} s input {:.1} MiB, {} s input {:.1} MiB, ratio {:.2}",
                m.short_seconds, m.short_peak_rss_mib, m.long_seconds, m.long_peak_rss_mib, m.ratio
            );
        }
    }
    Ok(())
}

/// The median of some timings (the upper middle one for an even count).
fn time_ffmpeg(input: &Path, out: &Path, args: &MediaBenchArgs, via_rgb: bool) -> Result<f64> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-y", "-v", "error", "-i"]).arg(input);
    cmd.args(["-map", "0:v:0", "-map", "0:a?", "-c:v", "libx264"]);
    cmd.args([
        "-preset",
        &args.preset,
        "-crf",
        &args.crf.to_string(),
        "-c:a",
        "copy",
    ]);
    if via_rgb {
        // ctxd's own path, step for step: YUV -> RGB24 with nearest-neighbour chroma, then
        // RGB24 -> YUV 4:2:0 with area-averaged chroma (media/color.rs), each in the scale
        // filter that does it, so the CLI pays the same conversions with the same swscale flags.
        cmd.args([
            "-vf",
            "scale=flags=neighbor,format=rgb24,scale=flags=area,format=yuv420p",
        ]);
    }
    cmd.arg(out);
    let t = Instant::now();
    let status = cmd.status().context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg transcode failed on {}", input.display());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `ctxd transcode` in a child process and returns its peak resident set size in MiB.
fn peak_rss_of_transcode(input: &Path, out: &Path, args: &MediaBenchArgs) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["-q", "transcode"])
        .arg(input)
        .arg("-o")
        .arg(out)
        .args([
            "--encoder-preset",
            &args.preset,
            "--crf",
            &args.crf.to_string(),
        ])
        .spawn()?;
    wait_rss(child.id() as libc::pid_t)
}
