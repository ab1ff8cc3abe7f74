//! `ctxd bench soak`: the daemon under a steady stream of drops for a long time, its API
//! polled all along, to see whether what it holds (resident memory, open file descriptors,
//! threads) stays flat or grows with the work done.
//!
//! Flat is judged by comparing the run's last third with its middle third (the first third is
//! warm-up: models loaded, caches and allocator arenas filled), and by the growth rate over
//! the second half. Every sample goes to a CSV for a plot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::harness::{drop_into, http_get, proc_stats, unique_clip, WatchRoot, WatchSettings};

#[derive(Args, Debug)]
pub struct SoakBenchArgs {
    /// How long to keep dropping files.
    #[arg(long, default_value_t = 120.0)]
    pub minutes: f64,
    /// Seconds between drops.
    #[arg(long, default_value_t = 10.0)]
    pub every: f64,
    /// Every Nth drop is a broken file (a clip cut short), so failures are soaked too; 0 for
    /// none.
    #[arg(long, default_value_t = 8)]
    pub bad_every: usize,
    /// Bundle the daemon uses.
    #[arg(long, default_value = "models/oracle", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// DDIM steps per edit.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Short side the edits run at.
    #[arg(long, default_value_t = 128)]
    pub short_side: u32,
    /// Classifier-free guidance (above 1 the UNet runs twice per step).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f32,
    /// Size of the dropped clips (1 s at 10 fps each).
    #[arg(long, default_value = "320x240")]
    pub size: String,
    /// Jobs the daemon runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Milliseconds between API requests (`/healthz`, `/jobs`, `/jobs/{id}`, `/metrics` in
    /// turn).
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
    /// Seconds between samples of the daemon's memory, descriptors and threads.
    #[arg(long, default_value_t = 5.0)]
    pub sample_seconds: f64,
    /// Write every sample here as CSV (as it is taken, so a run cut short keeps its data).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Keep the clips, outputs and daemon log here (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rss_mib: f64,
    fds: usize,
    threads: usize,
    dropped: usize,
    ended: usize,
}

/// One resource over the run: its middle and last thirds and its growth over the second half.
#[derive(Debug, Serialize)]
struct Trend {
    first: f64,
    max_middle_third: f64,
    max_last_third: f64,
    /// Least-squares slope over the second half, per hour.
    slope_per_hour_second_half: f64,
    last: f64,
}

#[derive(Debug, Serialize)]
struct SoakResult {
    minutes: f64,
    drops: usize,
    bad_drops: usize,
    outputs: usize,
    failure_records: usize,
    /// Drops that ended neither way (none expected).
    unended: usize,
    api_requests: u64,
    api_errors: u64,
    daemon_exited: bool,
    rss_mib: Trend,
    fds: Trend,
    threads: Trend,
    peak_rss_mib: f64,
    /// The judgement: descriptors and threads in the last third no more than 4 above the
    /// middle third's, and memory in the last third within 5% (+32 MiB) of the middle third's.
    flat: bool,
}

fn trend(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Trend {
    let n = samples.len();
    let third = n / 3;
    let max = |s: &[Sample]| s.iter().map(&value).fold(f64::NAN, f64::max);
    let half = &samples[n / 2..];
    let (mt, mv) = (
        half.iter().map(|s| s.t_s).sum::<f64>() / half.len() as f64,
        half.iter().map(&value).sum::<f64>() / half.len() as f64,
    );
    let (num, den) = half.iter().fold((0.0, 0.0), |(a, b), s| {
        (
            a + (s.t_s - mt) * (value(s) - mv),
            b + (s.t_s - mt) * (s.t_s - mt),
        )
    });
    Trend {
        first: value(&samples[0]),
        max_middle_third: max(&samples[third..n - third]),
        max_last_third: max(&samples[n - third..]),
        slope_per_hour_second_half: if den > 0.0 { num / den * 3600.0 } else { 0.0 },
        last: value(&samples[n - 1]),
    }
}

fn count_ending(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    })
}

pub fn soak(args: &SoakBenchArgs) -> Result<()> {
    if args.minutes <= 0.0 || args.every <= 0.0 || args.sample_seconds <= 0.0 {
        bail!("--minutes, --every and --sample-seconds must be positive");
    }
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let (exe, bundle, preset) = super::binary_bench_setup(
        &dir,
        &args.bundle,
        args.steps,
        args.guidance,
        args.short_side,
    )?;
    let root = WatchRoot::create(
        &dir.join("daemon"),
        &WatchSettings {
            preset: &preset,
            bundle: &bundle,
            concurrency: args.concurrency,
            extra: "",
        },
        "source = \"a test pattern\"\n[[edit]]\nprompt = \"red\"\n",
    )?;
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    let log = dir.join("daemon.log");
    let (mut daemon, addr) = root.start(&exe, Some(&log))?;
    let pid = daemon.pid();

    // The API poller: every endpoint in turn, for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let poller = {
        let (stop, requests, errors, addr) = (stop.clone(), requests.clone(), errors.clone(), addr);
        let pause = Duration::from_millis(args.poll_ms);
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let path = match i % 4 {
                    0 => "/healthz".to_string(),
                    1 => "/jobs?limit=50".to_string(),
                    2 => format!("/jobs/{}", 1 + i / 4 % 64),
                    _ => "/metrics".to_string(),
                };
                requests.fetch_add(1, Ordering::Relaxed);
                // A job id not there yet is a clean 404, not an error.
                match http_get(&addr, &path) {
                    Ok((200, _)) | Ok((404, _)) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                std::thread::sleep(pause);
            }
        })
    };

    let ended = || {
        count_ending(&root.dir("outbox"), ".red.json")
            + count_ending(&root.dir("failed"), ".error.json")
    };
    let run = Duration::from_secs_f64(args.minutes * 60.0);
    let every = Duration::from_secs_f64(args.every);
    let sample_every = Duration::from_secs_f64(args.sample_seconds);
    let t0 = Instant::now();
    let (mut drops, mut bad_drops) = (0usize, 0usize);
    let mut next_drop = t0;
    let mut next_sample = t0;
    let mut samples: Vec<Sample> = Vec::new();
    let mut exited = false;
    let mut csv = match &args.csv {
        Some(p) => Some(csv::Writer::from_path(p)?),
        None => None,
    };
    // Drop for the run's length, then let the queue drain (bounded).
    let drain_limit = run + Duration::from_secs(300);
    loop {
        let now = Instant::now();
        if daemon.exited()?.is_some() {
            exited = true;
            break;
        }
        let dropping = now.duration_since(t0) < run;
        if dropping && now >= next_drop {
            let name = format!("soak-{drops:05}.mp4");
            let staged = staging.join(&name);
            unique_clip(drops, &args.size, &staged)?;
            if args.bad_every > 0 && drops % args.bad_every == args.bad_every - 1 {
                // Cut to a third: the container promises frames that are not there.
                let bytes = std::fs::read(&staged)?;
                std::fs::write(&staged, &bytes[..bytes.len() / 3])?;
                bad_drops += 1;
            }
            drop_into(&staged, &root.dir("inbox"), &name)?;
            drops += 1;
            next_drop += every;
        }
        if now >= next_sample {
            let p = proc_stats(pid)?;
            samples.push(Sample {
                t_s: now.duration_since(t0).as_secs_f64(),
                rss_mib: p.rss_mib,
                fds: p.fds,
                threads: p.threads,
                dropped: drops,
                ended: ended(),
            });
            if let (Some(w), Some(s)) = (csv.as_mut(), samples.last()) {
                w.serialize(s)?;
                w.flush()?;
            }
            if !args.json {
                eprint!(
                    "\r{:>6.0} s  rss {:>7.1} MiB  fds {:>3}  threads {:>3}  dropped {drops}  ended {}   ",
                    samples.last().map_or(0.0, |s| s.t_s),
                    p.rss_mib,
                    p.fds,
                    p.threads,
                    samples.last().map_or(0, |s| s.ended)
                );
            }
            next_sample += sample_every;
        }
        if !dropping && (ended() >= drops || now.duration_since(t0) > drain_limit) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !args.json {
        eprintln!();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let peak = proc_stats(pid).map(|p| p.peak_rss_mib).unwrap_or(f64::NAN);
    if !exited {
        daemon.stop()?;
    }
    if samples.len() < 6 {
        bail!(
            "too few samples ({}) to judge a trend: run longer",
            samples.len()
        );
    }
    let outputs = count_ending(&root.dir("outbox"), ".red.json");
    let failure_records = count_ending(&root.dir("failed"), ".error.json");
    let rss = trend(&samples, |s| s.rss_mib);
    let fds = trend(&samples, |s| s.fds as f64);
    let threads = trend(&samples, |s| s.threads as f64);
    // Slack of a few descriptors and threads: what one job in flight holds (its input, its
    // outputs, its stage threads) may be caught in one third and not the other. A leak of
    // one per job grows by the number of jobs in a third.
    let flat = fds.max_last_third <= fds.max_middle_third + 4.0
        && threads.max_last_third <= threads.max_middle_third + 4.0
        && rss.max_last_third <= rss.max_middle_third * 1.05 + 32.0;
    let r = SoakResult {
        minutes: args.minutes,
        drops,
        bad_drops,
        outputs,
        failure_records,
        unended: drops.saturating_sub(outputs + failure_records),
        api_requests: requests.load(Ordering::Relaxed),
        api_errors: errors.load(Ordering::Relaxed),
        daemon_exited: exited,
        rss_mib: rss,
        fds,
        threads,
        peak_rss_mib: peak,
        flat,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} min, {} drops ({} broken): {} outputs, {} failure records, {} unended",
            r.minutes, r.drops, r.bad_drops, r.outputs, r.failure_records, r.unended
        );
        println!(
            "API: {} requests, {} errors; daemon {}",
            r.api_requests,
            r.api_errors,
            if r.daemon_exited { "EXITED" } else { "up" }
        );
        for (name, t) in [
            ("RSS MiB", &r.rss_mib),
            ("fds", &r.fds),
            ("threads", &r.threads),
        ] {
            println!(
                "  {name:<8} first {:>8.1}  middle-third max {:>8.1}  last-third max {:>8.1}  second-half slope {:>+8.2}/h  last {:>8.1}",
                t.first, t.max_middle_third, t.max_last_third, t.slope_per_hour_second_half, t.last
            );
        }
        println!(
            "  peak RSS {:.1} MiB; {}",
            r.peak_rss_mib,
            if r.flat { "flat" } else { "NOT flat" }
        );
    }
    Ok(())
}
