//! `ctxd bench batch`: what the inversion cache is worth to an archive, measured on the real
//! binary: one `ctxd batch` pass with a first prompt (cold cache), a second pass with another
//! prompt (every inversion from the cache), against a shell loop of `ctxd edit` (no cache),
//! plus the cache's size per second of video.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct BatchBenchArgs {
    /// Bundle every run uses (tiny: real network shapes, so the networks dominate as with a
    /// real model).
    #[arg(long, default_value = "models/tiny", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// How many clips in the archive.
    #[arg(long, default_value_t = 6)]
    pub clips: usize,
    /// Seconds per clip (10 fps, 160x120).
    #[arg(long, default_value_t = 1.6)]
    pub seconds: f64,
    /// DDIM steps (the default preset's).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Guidance (the default preset's; above 1 the edit runs the UNet twice per step).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Processing short side, pixels.
    #[arg(long, default_value_t = 128)]
    pub short_side: u32,
    /// Keep the clips, outputs and cache here (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BatchBench {
    bundle: String,
    clips: usize,
    seconds_per_clip: f64,
    steps: usize,
    guidance: f32,
    short_side: u32,
    loop_s: f64,
    first_s: f64,
    second_s: f64,
    /// second pass ÷ first pass (the goal: at most 0.55).
    second_over_first: f64,
    loop_clips_per_hour: f64,
    first_clips_per_hour: f64,
    second_clips_per_hour: f64,
    /// Windows the second pass took from the cache, of all its windows.
    second_hits: u64,
    second_windows: u64,
    cache_bytes: u64,
    cache_bytes_per_clip_second: f64,
}

fn run(cmd: &mut Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| what.to_string())?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(t.elapsed().as_secs_f64())
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub fn batch(args: &BatchBenchArgs) -> Result<()> {
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let (exe, bundle, preset) = super::binary_bench_setup(
        &dir,
        &args.bundle,
        args.steps,
        args.guidance,
        args.short_side,
    )?;
    let archive = dir.join("archive");
    let clips = super::watch::make_clips(&archive, args.clips, args.seconds)?;
    std::fs::write(
        archive.join("_defaults.toml"),
        "source = \"a test pattern\"\n",
    )?;
    let common = |c: &mut Command| {
        c.arg("--preset")
            .arg(&preset)
            .arg("--bundle")
            .arg(&bundle)
            .arg("-q");
    };

    // Baseline: one `ctxd edit` per clip, no cache (what a shell loop does today).
    let loop_out = dir.join("loop-out");
    std::fs::create_dir_all(&loop_out)?;
    let t = Instant::now();
    for clip in &clips {
        let mut c = Command::new(&exe);
        c.arg("edit")
            .arg(clip)
            .args(["--prompt", "red", "--no-cache"]);
        common(&mut c);
        run(c.arg("--out-dir").arg(&loop_out), "ctxd edit")?;
    }
    let loop_s = t.elapsed().as_secs_f64();

    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let out = dir.join("batch-out");
    let _ = std::fs::remove_dir_all(&out);
    let pass = |prompt: &str| -> Result<f64> {
        let mut c = Command::new(&exe);
        c.arg("batch")
            .arg(&archive)
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--no-previews", "--prompt", prompt]);
        common(&mut c);
        run(&mut c, "ctxd batch")
    };
    let first_s = pass("red")?;
    let second_s = pass("blue")?;
    let (mut hits, mut windows) = (0, 0);
    for line in std::fs::read_to_string(out.join("summary.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        hits += v["cache_hits"].as_u64().unwrap_or(0);
        windows += v["cache_hits"].as_u64().unwrap_or(0) + v["cache_misses"].as_u64().unwrap_or(0);
    }
    let cache_bytes = dir_bytes(&cache);
    let per_hour = |s: f64| clips.len() as f64 * 3600.0 / s;
    let r = BatchBench {
        bundle: bundle.display().to_string(),
        clips: clips.len(),
        seconds_per_clip: args.seconds,
        steps: args.steps,
        guidance: args.guidance,
        short_side: args.short_side,
        loop_s,
        first_s,
        second_s,
        second_over_first: second_s / first_s,
        loop_clips_per_hour: per_hour(loop_s),
        first_clips_per_hour: per_hour(first_s),
        second_clips_per_hour: per_hour(second_s),
        second_hits: hits,
        second_windows: windows,
        cache_bytes,
        cache_bytes_per_clip_second: cache_bytes as f64 / (clips.len() as f64 * args.seconds),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} clips of {} s, {} steps, guidance {}, short side {}, bundle {}",
        r.clips, r.seconds_per_clip, r.steps, r.guidance, r.short_side, r.bundle
    );
    println!(
        "  ctxd edit in a loop (no cache): {:>7.1} s  {:>7.0} clips/h",
        r.loop_s, r.loop_clips_per_hour
    );
    println!(
        "  ctxd batch, first prompt:       {:>7.1} s  {:>7.0} clips/h",
        r.first_s, r.first_clips_per_hour
    );
    println!(
        "  ctxd batch, second prompt:      {:>7.1} s  {:>7.0} clips/h  ({}/{} windows from the cache)",
        r.second_s, r.second_clips_per_hour, r.second_hits, r.second_windows
    );
    println!(
        "  second / first: {:.2}   cache: {:.1} MiB, {:.0} KiB per clip-second",
        r.second_over_first,
        r.cache_bytes as f64 / (1 << 20) as f64,
        r.cache_bytes_per_clip_second / 1024.0
    );
    Ok(())
}
