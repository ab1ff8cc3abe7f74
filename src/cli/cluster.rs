//! `ctxd worker`, `ctxd submit`, `ctxd status`: the command line of `crate::cluster`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Args;

use super::edit::{home, SpecArgs};
use super::{CacheArgs, RuntimeArgs};
use crate::cluster::{self, ClusterOptions, State};
use crate::pipeline::spec;

/// Where the NATS cluster is and how to log in (never a password on the command line: it
/// shows in every process list).
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// Server URL(s), comma-separated (tls:// for TLS); default $CTXD_NATS_URL. Credentials:
    /// $CTXD_NATS_USER and $CTXD_NATS_PASSWORD, or --nats-creds / --nats-nkey files.
    #[arg(long = "nats", value_name = "URL", env = "CTXD_NATS_URL")]
    pub url: String,
    /// A NATS .creds file (default $CTXD_NATS_CREDS).
    #[arg(long = "nats-creds", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (default $CTXD_NATS_NKEY).
    #[arg(long = "nats-nkey", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// A CA certificate (PEM) for the servers' TLS (default $CTXD_NATS_CA).
    #[arg(long = "nats-ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Replicas of the streams and buckets ctxd creates (3 on a 3-node cluster); applies
    /// when they are first created.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Move videos through this folder (mounted by every worker and submitter) instead of
    /// the JetStream object store.
    #[arg(long, value_name = "DIR")]
    pub shared: Option<PathBuf>,
}

impl NatsArgs {
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            url: self.url.clone(),
            creds: self.creds.clone(),
            nkey: self.nkey.clone(),
            ca: self.ca.clone(),
            replicas: self.replicas,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Jobs run at once (each holds one delivery; the worker never asks for more).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Model bundle folder (default: $CTXD_BUNDLE, else models/oracle); every worker of a
    /// cluster needs the same one, which submitters key jobs by.
    #[arg(long, value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: Option<PathBuf>,
    /// This worker's name in `ctxd status` (default: host-pid).
    #[arg(long)]
    pub id: Option<String>,
    /// Where running jobs keep their files (default: a folder of its own under $TMPDIR,
    /// removed when the worker stops; one that a killed worker left is removed by the next
    /// worker to start there).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Videos to edit (each a job, keyed by its content and settings).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Wait until every job has ended, then fetch the outputs (exit 1 if any failed).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds (the jobs go on).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// With --wait: where outputs go (default: beside each input).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Queue a job that failed before again.
    #[arg(long)]
    pub redo: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List every job (state, worker, attempts, reason, how often it was written done).
    #[arg(long)]
    pub jobs: bool,
}

pub fn worker(args: &WorkerArgs, stop: Arc<AtomicBool>) -> Result<()> {
    let home = home();
    let bundle = spec::bundle_dir(args.bundle.as_deref(), None, &home);
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    // A worker's id is a KV key: letters, digits, '-', '_', '.', '='.
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.=".contains(c))
    {
        return Err(anyhow!("--id {id:?}: use letters, digits and - _ . = only"));
    }
    let tmp;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            tmp = cluster::scratch::Scratch::new_in(&std::env::temp_dir())?;
            tmp.path().to_path_buf()
        }
    };
    let totals = cluster::worker::run(
        cluster::worker::WorkerOptions {
            cluster: args.nats.options(),
            slots: args.slots.max(1),
            bundle,
            runtime: args.runtime.options(),
            work_dir,
            id,
            cache: args.cache.open()?,
        },
        stop,
    )?;
    tracing::info!(
        "worker stopped: {} done, {} failed, {} retried",
        totals.done,
        totals.failed,
        totals.retried
    );
    Ok(())
}

/// Submits; Ok(false) when a job failed (waited for, or already failed and not redone).
pub fn submit(args: &SubmitArgs, quiet: bool) -> Result<bool> {
    let home = home();
    let pipelines = home.join("pipelines");
    let mut subs = Vec::new();
    for input in &args.inputs {
        if !input.is_file() {
            return Err(anyhow!("{}: not a file", input.display()));
        }
        let spec = args
            .spec
            .resolve(Some(input), &pipelines)
            .map_err(|e| anyhow!("{}: {e}", input.display()))?;
        let bundle = spec::bundle_dir(args.spec.bundle.as_deref(), spec.bundle.as_deref(), &home);
        subs.push(cluster::submit::Submission {
            input: input.clone(),
            spec,
            bundle,
        });
    }
    let say = |line: String| {
        if !quiet {
            eprintln!("ctxd: {line}");
        }
    };
    let done = cluster::submit::run(
        &cluster::submit::SubmitOptions {
            cluster: args.nats.options(),
            redo: args.redo,
            wait: args.wait.then(|| Duration::from_secs(args.timeout)),
            out_dir: args.out_dir.clone(),
        },
        &subs,
        &say,
    )?;
    for d in &done {
        for f in &d.fetched {
            println!("{}", f.display());
        }
    }
    // A failed job (this time, or before and not --redo) fails the command, waiting or not.
    let none_failed = done
        .iter()
        .all(|d| !matches!(d.state, State::Failed | State::Cancelled));
    Ok(none_failed && (!args.wait || done.iter().all(|d| d.state == State::Done)))
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Job keys, or 8+ leading characters of each (as `ctxd submit` and `ctxd status --jobs`
    /// print them).
    #[arg(required = true)]
    pub jobs: Vec<String>,
}

/// Cancels jobs; one line per job. Ok(false) when a job had already ended otherwise.
pub fn cancel(args: &CancelArgs) -> Result<bool> {
    let mut all = true;
    for (key, state, now) in cluster::submit::cancel(&args.nats.options(), &args.jobs)? {
        if now {
            println!("{}: cancelled", &key[..12]);
        } else {
            println!("{}: already {}; left as it is", &key[..12], state.name());
            all = false;
        }
    }
    Ok(all)
}

pub fn status(args: &StatusArgs) -> Result<()> {
    let s = cluster::status::status(&args.nats.options(), args.jobs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.render());
    }
    Ok(())
}
