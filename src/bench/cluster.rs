//! `ctxd bench cluster`: jobs per hour through a local NATS JetStream server with 1, 2, 3...
//! single-thread workers (scaling efficiency against one worker), and what the queue costs per
//! job (claiming, fetching the input, storing outputs and state) against the job's own engine
//! time, every figure from one run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::median;
use crate::cluster::status::{status, JobSummary};
use crate::cluster::ClusterOptions;

#[derive(Args, Debug)]
pub struct ClusterBenchArgs {
    #[arg(long, default_value = "models/tiny", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// Jobs per round (clips of --seconds at 160x120, 10 fps).
    #[arg(long, default_value_t = 12)]
    pub jobs: usize,
    #[arg(long, default_value_t = 1.6)]
    pub seconds: f64,
    /// Worker counts, one round each (every worker single-threaded, one slot).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub workers: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub short_side: u32,
    /// Keep the clips, server store and logs here (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Round {
    workers: usize,
    jobs: usize,
    wall_s: f64,
    jobs_per_hour: f64,
    /// jobs/hour ÷ (workers × one worker's jobs/hour).
    scaling_efficiency: f64,
    /// Median engine seconds per job (`ctxd edit`'s own work).
    job_s: f64,
    /// Median seconds per job on a worker outside the engine: claim, input fetch, output and
    /// state writes.
    queue_overhead_s: f64,
    /// queue overhead ÷ engine time.
    overhead_ratio: f64,
    /// Median seconds from submission to a worker starting it.
    wait_s: f64,
}

/// A nats-server on a free loopback port, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &Path) -> Result<(Server, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (run scripts/setup)")?;
    let url = format!("nats://127.0.0.1:{port}");
    let server = Server(child);
    let opts = options(&url);
    let since = Instant::now();
    while status(&opts, false).is_err() {
        if since.elapsed() > Duration::from_secs(20) {
            bail!("nats-server on {url} did not come up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((server, url))
}

fn options(url: &str) -> ClusterOptions {
    ClusterOptions {
        url: url.to_string(),
        replicas: 1,
        ..Default::default()
    }
}

pub fn cluster(args: &ClusterBenchArgs) -> Result<()> {
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let (exe, bundle, preset) =
        super::binary_bench_setup(&dir, &args.bundle, args.steps, 1.0, args.short_side)?;
    let clips = super::watch::make_clips(&dir.join("clips"), args.jobs, args.seconds)?;
    let (_server, url) = start_server(&dir)?;
    let opts = options(&url);
    let mut rounds: Vec<Round> = Vec::new();
    for &n in &args.workers {
        let mut workers = Vec::new();
        for i in 0..n {
            let log = std::fs::File::create(dir.join(format!("worker-{n}-{i}.log")))?;
            workers.push(
                Command::new(&exe)
                    .args(["worker", "--nats", &url, "--slots", "1", "--threads", "1"])
                    .args([
                        "--device",
                        "cpu",
                        "--no-cache",
                        "--id",
                        &format!("bench-{n}-{i}"),
                    ])
                    .arg("--bundle")
                    .arg(&bundle)
                    .arg("--work-dir")
                    .arg(dir.join(format!("work-{n}-{i}")))
                    .stderr(log)
                    .spawn()?,
            );
        }
        // Every worker registered before the clock starts.
        let since = Instant::now();
        loop {
            let s = status(&opts, false)?;
            let live = s
                .workers
                .iter()
                .filter(|w| w.id.starts_with(&format!("bench-{n}-")))
                .count();
            if live == n {
                break;
            }
            if since.elapsed() > Duration::from_secs(30) {
                bail!("{live} of {n} workers came up");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let started_epoch = crate::cluster::now();
        let t0 = Instant::now();
        // A prompt of its own per round: new keys, so nothing is "already done".
        let ok = Command::new(&exe)
            .args([
                "-q",
                "submit",
                "--nats",
                &url,
                "--wait",
                "--source",
                "a test pattern",
            ])
            .args(["--prompt", &format!("a red test pattern, round {n}")])
            .arg("--preset")
            .arg(&preset)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--out-dir")
            .arg(dir.join(format!("out-{n}")))
            .args(&clips)
            .stdout(Stdio::null())
            .status()?
            .success();
        let wall_s = t0.elapsed().as_secs_f64();
        for w in &mut workers {
            unsafe {
                libc::kill(w.id() as i32, libc::SIGTERM);
            }
        }
        for mut w in workers {
            let _ = w.wait();
        }
        if !ok {
            bail!(
                "round with {n} workers: a job failed (logs in {})",
                dir.display()
            );
        }
        let s = status(&opts, true)?;
        let jobs: Vec<&JobSummary> = s
            .job_list
            .iter()
            .flatten()
            .filter(|j| {
                j.submitted_at >= started_epoch - 1.0 && j.state == crate::cluster::State::Done
            })
            .collect();
        let job_s = median(jobs.iter().filter_map(|j| j.run_s).collect());
        let span = |j: &&JobSummary| Some(j.finished_at? - j.started_at? - j.run_s?);
        let overhead = median(jobs.iter().filter_map(span).collect());
        let wait = median(
            jobs.iter()
                .filter_map(|j| Some(j.started_at? - j.submitted_at))
                .collect(),
        );
        let jobs_per_hour = args.jobs as f64 / wall_s * 3600.0;
        let base = rounds.first().map(|r| r.jobs_per_hour / r.workers as f64);
        rounds.push(Round {
            workers: n,
            jobs: jobs.len(),
            wall_s,
            jobs_per_hour,
            scaling_efficiency: base.map_or(1.0, |b| jobs_per_hour / (n as f64 * b)),
            job_s,
            queue_overhead_s: overhead,
            overhead_ratio: overhead / job_s,
            wait_s: wait,
        });
        eprintln!(
            "ctxd: bench cluster: {n} worker(s): {} jobs in {wall_s:.1} s",
            args.jobs
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rounds)?);
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ctxd bench cluster: {} jobs per round ({} s clips, {} steps, short side {}), one nats-server, single-thread workers, {cores} cores",
        args.jobs, args.seconds, args.steps, args.short_side
    );
    println!("| workers | wall s | jobs/hour | scaling efficiency | engine s/job | queue overhead s/job | overhead / engine | wait s (median) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rounds {
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1} |",
            r.workers,
            r.wall_s,
            r.jobs_per_hour,
            r.scaling_efficiency,
            r.job_s,
            r.queue_overhead_s,
            r.overhead_ratio,
            r.wait_s
        );
    }
    Ok(())
}
