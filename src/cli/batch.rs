//! `ctxd batch`: flags → `batch::BatchOptions`, a progress bar (jobs and frames, with ETA) on
//! a terminal and one line per job otherwise, the plan with `--dry-run`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use clap::Args;

use super::{CacheArgs, EncodeArgs, RuntimeArgs};
use crate::batch::{self, Action, BatchOptions, Event, Outcome};
use crate::pipeline::spec::PromptFile;
use crate::sync::lock;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Videos and folders (walked; `--include`/`--exclude` filter them). Not with --manifest.
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub sources: Vec<PathBuf>,
    /// A manifest instead: CSV with a header (`path` required; `source`, `prompt` with
    /// several separated by `|`, `negative`, `guidance`, `steps`, `seed`, `context`,
    /// `preset`) or JSON lines (`.jsonl`; `prompts` as a list). Row values beat the flags.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Output folder: the source tree is mirrored under it; summary.csv, summary.jsonl and
    /// report.html are written here.
    #[arg(long = "out", short = 'o')]
    pub out: PathBuf,
    /// Only files matching this glob (relative to the folder given; `*.mp4` matches at any
    /// depth). Repeatable. Default: common video extensions.
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files matching this glob. Repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Jobs at a time (they share the cores; with --nats, jobs in the cluster at a time).
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Run the jobs on a NATS JetStream cluster's `ctxd worker`s instead of here (URLs
    /// comma-separated; credentials from CTXD_NATS_USER/CTXD_NATS_PASSWORD, CTXD_NATS_CREDS or
    /// CTXD_NATS_NKEY). The outputs, summary and report land here as usual.
    #[arg(long = "nats", value_name = "URL")]
    pub nats: Option<String>,
    /// With --nats: move videos through this folder (mounted by every worker) instead of the
    /// object store.
    #[arg(long, value_name = "DIR", requires = "nats")]
    pub shared: Option<PathBuf>,
    /// Print the plan (what runs, what is done, what failed before) and an estimate from this
    /// folder's measured per-frame times; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run again the jobs that failed before (by default they are reported, not retried,
    /// until their input, prompt or bundle changes).
    #[arg(long)]
    pub retry_failed: bool,
    /// No report pictures (before/after sheets and animated previews).
    #[arg(long)]
    pub no_previews: bool,
    /// Print the outcome (or, with --dry-run, the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// What to edit and how (the same flags as `ctxd edit`; a manifest row's values beat
    /// them, and `--prompt-file` is used instead of each video's sidecar).
    #[command(flatten)]
    pub spec: super::edit::SpecArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The options these flags describe (errors here are usage errors).
pub fn options(args: &BatchArgs, cancel: Arc<AtomicBool>) -> Result<BatchOptions> {
    let sources = match &args.manifest {
        Some(m) => {
            if !args.include.is_empty() || !args.exclude.is_empty() {
                bail!("--include and --exclude filter folders; a manifest lists its videos");
            }
            batch::plan::Sources::Manifest(m.clone())
        }
        None => batch::plan::Sources::Paths {
            roots: args.sources.clone(),
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        },
    };
    let prompt_file = args
        .spec
        .prompt_file
        .as_deref()
        .map(PromptFile::load)
        .transpose()?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    let out_dir = args.out.canonicalize()?;
    Ok(BatchOptions {
        sources,
        out_dir,
        cli: args.spec.overrides(),
        prompt_file,
        bundle: args.spec.bundle.clone(),
        home: super::edit::home(),
        jobs: args.jobs as usize,
        retry_failed: args.retry_failed,
        dry_run: args.dry_run,
        runtime: args.runtime.options(),
        encode: args.encode.settings(),
        cache: args.cache.open()?,
        previews: !args.no_previews,
        cancel,
        cluster: args
            .nats
            .as_ref()
            .map(|url| crate::cluster::ClusterOptions {
                url: url.clone(),
                replicas: 1,
                shared: args.shared.clone(),
                ..Default::default()
            }),
    })
}

fn minutes(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn print_plan(o: &Outcome, jobs: usize) {
    for l in &o.plan {
        let what = match l.action {
            Action::Run => "run",
            Action::SkipDone => "done",
            Action::SkipFailed => "failed before",
        };
        let frames = l
            .frames
            .map(|f| f.to_string())
            .unwrap_or_else(|| "?".into());
        let est = l.estimate_s.map(minutes).unwrap_or_default();
        println!("{what:<14} {frames:>7} frames {est:>9}  {}", l.rel);
        if let Some(e) = &l.error {
            println!("{:<14} will fail: {e}", "");
        }
    }
    let runs: Vec<_> = o.plan.iter().filter(|l| l.action == Action::Run).collect();
    let frames: u64 = runs.iter().filter_map(|l| l.frames).sum();
    println!(
        "{} to run ({frames} frames), {} done, {} failed before (--retry-failed to redo)",
        runs.len(),
        o.skipped_done,
        o.skipped_failed
    );
    match o.estimate_s {
        Some(s) => println!(
            "estimated {} at --jobs {jobs}, from this folder's measured per-frame times (a job whose inversion is cached costs less)",
            minutes(s)
        ),
        None if runs.is_empty() => {}
        None => println!(
            "no estimate yet: no job has finished in this output folder (run a few first, e.g. one folder)"
        ),
    }
}

/// Runs the batch; `Ok(true)` when every job is done.
pub fn run(
    args: &BatchArgs,
    cancel: Arc<AtomicBool>,
    quiet: bool,
) -> Result<bool, (bool, anyhow::Error)> {
    let opts = options(args, cancel).map_err(|e| (true, e))?;
    let bar = if quiet || args.dry_run {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} frames, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let lines = bar.is_hidden() && !quiet && !args.dry_run;
    let jobs = Mutex::new((0usize, 0usize, 0usize)); // total, ended, failed
    let on = |e: Event| match e {
        Event::Planned { jobs: n, frames } => {
            lock(&jobs).0 = n;
            bar.set_length(frames);
            bar.set_message(format!("0/{n} jobs"));
            if lines {
                eprintln!("ctxd: batch: {n} job(s) to run, {frames} frames");
            }
        }
        Event::Started { rel } => {
            if lines {
                eprintln!("ctxd: batch: {rel}: started");
            }
        }
        Event::Frames(n) => bar.inc(n),
        Event::Ended { rel, error } => {
            let mut j = lock(&jobs);
            j.1 += 1;
            if error.is_some() {
                j.2 += 1;
            }
            let failed = if j.2 > 0 {
                format!(", {} failed", j.2)
            } else {
                String::new()
            };
            bar.set_message(format!("{}/{} jobs{failed}", j.1, j.0));
            let line = match error {
                Some(e) => format!("ctxd: batch: {rel}: failed: {e}"),
                None => format!("ctxd: batch: {rel}: done"),
            };
            if lines || (error.is_some() && !quiet) {
                bar.suspend(|| eprintln!("{line}"));
            }
        }
    };
    let outcome = batch::run(&opts, &on)
        .map_err(|e| (matches!(e, batch::run::BatchError::Plan(_)), e.into()))?;
    bar.finish_and_clear();
    if args.json {
        if let Ok(text) = serde_json::to_string_pretty(&outcome) {
            println!("{text}");
        }
    } else if args.dry_run {
        print_plan(&outcome, opts.jobs);
    }
    if !quiet && !args.dry_run {
        eprintln!(
            "ctxd: batch: {} done, {} failed, {} not run ({} ran now, {} done before) in {}; {}",
            outcome.done,
            outcome.failed,
            outcome.not_run,
            outcome.ran,
            outcome.skipped_done,
            minutes(outcome.wall_s),
            outcome
                .report
                .as_ref()
                .map(|r| format!("report: {}", r.display()))
                .unwrap_or_default()
        );
        if outcome.interrupted {
            eprintln!("ctxd: batch: stopped; run the same command again to resume");
        }
    }
    Ok(args.dry_run || (outcome.failed == 0 && outcome.not_run == 0))
}
