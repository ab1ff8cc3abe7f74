//! The command line. `main` parses flags, sets up logging, runs one subcommand and maps its
//! result to an exit code:
//!
//! - 0: done
//! - 1: the job failed (bad input, unwritable output, cancelled)
//! - 2: usage or configuration error (bad flags, unknown codec or pixel format)
//!
//! Errors print as one line: `ctxd: <what>: <cause>`.

pub mod batch;
pub mod cluster;
pub mod edit;
pub mod stream;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Args, Parser, Subcommand};

use crate::media::{self, transcode, EncodeSettings, InputSpec, MediaError};
use crate::model::{self, Device, ModelError, Pipelining, RuntimeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "ctxd",
    version,
    about = "Edit videos with text prompts using contextualized diffusion (ContextDiff)",
    after_help = "Exit status: 0 done, 1 the job failed (bad input or output), 2 usage or configuration error.\nLogging: -v/-vv, or CTXD_LOG=debug (tracing filter syntax)."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Edit a video with text prompts: one output per prompt, sharing one decode, one VAE
    /// encode and one inversion; a JSON report beside each output.
    Edit(Box<edit::EditArgs>),
    /// Edit a live or piped stream window by window (stdin, a pipe, a growing file, a URL)
    /// into stdout, a file, an HLS folder or a URL; the prompt file is watched and a change
    /// takes effect at the next window. SIGINT/SIGTERM finish the window in flight and close
    /// the output, exit 0.
    Stream(Box<stream::StreamArgs>),
    /// Re-edit whole archives: walk folders (or read a manifest), mirror the tree under
    /// --out, N jobs at a time, resumable (a rerun skips what is done and redoes what was
    /// cut off), with summary.csv/.jsonl and report.html. A second prompt over the same
    /// videos takes the inversions from the cache. Exit 1 when any job failed.
    Batch(Box<batch::BatchArgs>),
    /// Run jobs from a NATS JetStream cluster's work queue (`ctxd submit` queues them) on
    /// the same engine as `ctxd edit`, --slots at a time; SIGINT/SIGTERM stop fetching and
    /// let running jobs finish.
    Worker(Box<cluster::WorkerArgs>),
    /// Queue videos on a NATS cluster's workers (one job per content and settings; what is
    /// queued, running or done is not queued twice); --wait follows them and fetches the
    /// outputs.
    Submit(Box<cluster::SubmitArgs>),
    /// A NATS cluster's workers, jobs by state, queue depth and last hour's throughput.
    Status(Box<cluster::StatusArgs>),
    /// Cancel cluster jobs by key: a queued job is never run, a running one stops at its next
    /// progress write (within seconds) and stores nothing; `ctxd submit --redo` queues it
    /// again. Exit 1 when a job had already ended.
    Cancel(Box<cluster::CancelArgs>),
    /// Watch inbox folders and edit what is dropped there (see watch/ctxd-watch.toml). Stops
    /// on SIGINT/SIGTERM after running jobs finish (or the grace period ends), exit 0.
    Watch {
        /// Configuration (default: watch/ctxd-watch.toml under CTXD_HOME).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print what a video holds as JSON: container, duration, video stream (codec, sizes,
    /// pixel format, frame rate, frame count, VFR, rotation), audio streams.
    Probe {
        /// A file, `-` for stdin, or a URL FFmpeg can open.
        input: String,
        /// Read only the header: no packet scan, so frame_count may be missing or inexact and
        /// the VFR flag is a guess.
        #[arg(long)]
        fast: bool,
    },
    /// Decode to RGB and re-encode with no edit: the media path every edit takes, with the
    /// source's timing, audio and tags. Checks that a file survives ctxd's I/O.
    Transcode {
        /// A file, `-` for stdin, or a URL FFmpeg can open.
        input: String,
        /// Output file; the container comes from its extension (mp4, mkv, mov, webm).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        encode: EncodeArgs,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Model bundles: list them, or check one (manifest, hashes, signatures, one trial run
    /// of each network).
    Models {
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// A contact sheet (PNG): one row per video, the source first, then each edit, with N
    /// evenly spaced frames across, upscaled by nearest neighbour.
    Sheet {
        /// The source video (the first row).
        input: PathBuf,
        /// Edited videos, one row each, in order.
        edited: Vec<PathBuf>,
        /// The PNG to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Frames per row, evenly spaced from the first to the last.
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Upscaling factor (default: 4 for clips up to 128 px, 2 up to 256 px, else 1).
        #[arg(long)]
        scale: Option<u32>,
    },
    /// The inversion cache: its size and entries, pruning to a size, clearing.
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
        /// The cache folder (default: $CTXD_CACHE_DIR, else ~/.cache/ctxd/inversions).
        #[arg(long, value_name = "DIR", global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Benchmarks (ratios against baselines measured in the same run).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// decode→RGB→encode throughput against the ffmpeg CLI, and peak memory for a short versus
    /// a long 720p input.
    Media(crate::bench::MediaBenchArgs),
    /// The sampler's own time per step (outside ONNX Runtime) against the UNet's.
    Sampler(crate::bench::SamplerBenchArgs),
    /// The staged pipeline against the same stages without overlap; ONNX Runtime's share;
    /// peak memory for a short versus a long input.
    Pipeline(crate::bench::PipelineBenchArgs),
    /// `ctxd stream` on content that changes scene: fps against `ctxd edit`, delay, the change
    /// across window boundaries against inside them per anchor mode, prompt-change delay, A/V
    /// drift, peak memory of a short and a long stream.
    Stream(crate::bench::StreamBenchArgs),
    /// Jobs per minute through `ctxd watch` against `ctxd edit` once per clip; idle CPU.
    Watch(crate::bench::WatchBenchArgs),
    /// `ctxd batch` over an archive with a first and a second prompt (the second takes every
    /// inversion from the cache): cost ratio, clips/hour against a loop of `ctxd edit`, cache
    /// size per clip-second.
    Batch(crate::bench::BatchBenchArgs),
    /// What a bundle trained on the demo domain really edits: each held-out clip's colour,
    /// shape and background edits through the engine, read back by the analyser (success,
    /// success with the scene kept, ghost frames, motion error, flicker, reconstruction PSNR,
    /// CLIP-T/F), one markdown table per context mode.
    Quality(Box<crate::bench::QualityBenchArgs>),
    /// `ctxd watch` under steady drops (some broken) with its API polled: resident memory,
    /// open descriptors and threads sampled, judged flat or growing.
    Soak(crate::bench::SoakBenchArgs),
    /// Jobs per hour through a local NATS JetStream server with 1, 2, 3 single-thread
    /// `ctxd worker`s (scaling efficiency), and the queue's overhead per job against the
    /// job's own engine time.
    Cluster(crate::bench::ClusterBenchArgs),
    /// `ctxd watch` killed with SIGKILL at random moments and restarted, inputs arriving
    /// throughout: no input lost, no output partial or doubled, attempts counted across
    /// crashes; exits non-zero when a promise broke.
    Chaos(crate::bench::ChaosBenchArgs),
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Entries, total size, the cap and how recently entries were used.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the least recently used entries until the cache is at most SIZE (e.g. 5G).
    Prune {
        #[arg(value_parser = crate::cache::parse_size)]
        size: u64,
    },
    /// Remove every entry.
    Clear,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Validate a bundle and run each network once on small inputs, printing shapes, the
    /// execution provider and times.
    Check {
        /// The bundle folder (holding bundle.toml).
        dir: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the bundles in a folder (default: $CTXD_MODELS, else ./models).
    List { dir: Option<PathBuf> },
}

/// Where and how networks run; shared by every command that runs models.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// cpu, cuda, cuda:N, or auto (CUDA when it registers, else CPU).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Threads inside each operator (default: ONNX Runtime's, one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// on: an edit's stages work on different windows at once, sharing the cores; off: one
    /// window at a time through the networks, each with every core (less memory; reading the
    /// input and writing the output still overlap them); auto: off on a CPU host of fewer
    /// than four cores, else on.
    #[arg(long, default_value = "auto", value_parser = parse_pipelining)]
    pub pipelining: Pipelining,
}

fn parse_pipelining(s: &str) -> Result<Pipelining, String> {
    s.parse()
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse()
}

impl RuntimeArgs {
    pub fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            device: self.device,
            intra_threads: self.threads,
            inter_threads: None,
            share_unet_from: None,
            optimized_cache: None,
            pipelining: self.pipelining,
            plan_memory_reuse: false,
        }
        .with_default_cache()
    }
}

/// The inversion cache, for every command that edits files.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Inversion cache folder (default: $CTXD_CACHE_DIR, else ~/.cache/ctxd/inversions; `off`
    /// for none).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Always invert; read and write no cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// The cache's size cap, e.g. 20G or 512M (default: $CTXD_CACHE_MAX, else 20G); the least
    /// recently used entries go first.
    #[arg(long, value_name = "SIZE", value_parser = crate::cache::parse_size)]
    pub cache_max: Option<u64>,
}

impl CacheArgs {
    /// The cache these flags (and the environment) select; None when off.
    ///
    /// # Errors
    /// A cache folder that cannot be created.
    pub fn open(&self) -> anyhow::Result<Option<crate::cache::InversionCache>> {
        use crate::cache::{self, InversionCache};
        if self.no_cache {
            return Ok(None);
        }
        let Some(dir) = self
            .cache_dir
            .clone()
            .filter(|d| d.as_os_str() != "off")
            .or_else(|| self.cache_dir.is_none().then(cache::default_dir).flatten())
        else {
            return Ok(None);
        };
        let max = self.cache_max.unwrap_or_else(cache::max_from_env);
        Ok(Some(InversionCache::open(&dir, max)?))
    }
}

/// Encoder settings shared by every command that writes video.
#[derive(Args, Debug, Clone)]
pub struct EncodeArgs {
    /// Video codec: h264 (default; vp9 for .webm), h265, vp9, av1, or an FFmpeg encoder name.
    #[arg(long)]
    pub codec: Option<String>,
    /// Constant rate factor (lower is better quality; default 18 for h264).
    #[arg(long)]
    pub crf: Option<u32>,
    /// Video encoder preset: ultrafast … veryslow (default medium).
    #[arg(id = "encoder_preset", long = "encoder-preset")]
    pub preset: Option<String>,
    /// Output pixel format (default: the source's when the encoder takes it).
    #[arg(long = "pix-fmt")]
    pub pix_fmt: Option<String>,
}

impl EncodeArgs {
    pub fn settings(&self) -> EncodeSettings {
        EncodeSettings {
            codec: self.codec.clone(),
            crf: self.crf,
            preset: self.preset.clone(),
            pix_fmt: self.pix_fmt.clone(),
            tune: None,
            gop: None,
            deflicker: None,
        }
    }
}

/// `daemon`: a long-running command, whose log is its record (jobs queued, started, done), so
/// it logs at info unless told otherwise.
fn init_logging(verbose: u8, quiet: bool, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if daemon => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("CTXD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The error that ends a command, on one line (a newline in a file name is written `\n`).
fn one_line_error(e: &anyhow::Error) {
    use std::io::Write;
    let _ = OneLine(std::io::stderr()).write_all(format!("ctxd: {e:#}\n").as_bytes());
}

/// The log's writer: one event, one line. A newline or carriage return inside an event (file
/// names may hold them) is written as `\n` / `\r`, so no name can forge a log line. The
/// formatter hands over each event whole, ending in its newline.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Failure classes and their exit codes.
enum Failure {
    Job(anyhow::Error),
    Usage(anyhow::Error),
}

impl From<MediaError> for Failure {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Settings(_) => Failure::Usage(e.into()),
            e => Failure::Job(e.into()),
        }
    }
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        match e {
            // A run that fails is the job's failure; everything else is the bundle or the
            // device being wrong for this machine: configuration.
            ModelError::Run { .. } | ModelError::Io(_) => Failure::Job(e.into()),
            e => Failure::Usage(e.into()),
        }
    }
}

impl From<crate::pipeline::spec::SpecError> for Failure {
    fn from(e: crate::pipeline::spec::SpecError) -> Self {
        Failure::Usage(e.into())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.quiet,
        matches!(
            cli.command,
            Command::Watch { .. } | Command::Stream(_) | Command::Worker(_)
        ),
    );
    let quiet = cli.quiet;
    let result = match cli.command {
        Command::Edit(args) => {
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cancel.clone();
            let _ = ctrlc_flag(move || flag.store(true, Ordering::Relaxed));
            edit::run(&args, cancel, quiet).map_err(|(usage, e)| {
                if usage {
                    Failure::Usage(e)
                } else {
                    Failure::Job(e)
                }
            })
        }
        Command::Batch(args) => {
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cancel.clone();
            let _ = ctrlc_flag(move || flag.store(true, Ordering::Relaxed));
            match batch::run(&args, cancel, quiet) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::Job(anyhow::anyhow!(
                    "batch: not every job is done (see {})",
                    args.out.join("summary.csv").display()
                ))),
                Err((true, e)) => Err(Failure::Usage(e)),
                Err((false, e)) => Err(Failure::Job(e)),
            }
        }
        Command::Worker(args) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let _ = ctrlc_flag(move || flag.store(true, Ordering::Relaxed));
            cluster::worker(&args, stop).map_err(Failure::Job)
        }
        Command::Submit(args) => match cluster::submit(&args, quiet) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Job(anyhow::anyhow!(
                "submit: not every job is done (`ctxd status --jobs` says why)"
            ))),
            Err(e) => Err(Failure::Job(e)),
        },
        Command::Status(args) => cluster::status(&args).map_err(Failure::Job),
        Command::Cancel(args) => match cluster::cancel(&args) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Job(anyhow::anyhow!(
                "cancel: not every job was still queued or running"
            ))),
            Err(e) => Err(Failure::Job(e)),
        },
        other => run(other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Job(e)) => {
            one_line_error(&e);
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            one_line_error(&e);
            ExitCode::from(2)
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Job(e.into()))?;
    // A closed pipe (`ctxd probe x | head`) is not an error worth a message.
    if writeln!(out, "{text}").is_err() {
        return Ok(());
    }
    Ok(())
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Edit(_)
        | Command::Batch(_)
        | Command::Worker(_)
        | Command::Submit(_)
        | Command::Status(_)
        | Command::Cancel(_) => unreachable!("handled in main"),
        Command::Stream(args) => run_stream(&args),
        Command::Watch { config } => {
            let home = edit::home();
            let path = config.unwrap_or_else(|| home.join("watch/ctxd-watch.toml"));
            let cfg = crate::daemon::config::WatchConfig::load(&path)
                .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
            let control = crate::daemon::run::Control::new();
            let on_signal = control.clone();
            let _ = ctrlc_flag(move || on_signal.stop());
            let paths = crate::daemon::run::Paths {
                pipelines: home.join("pipelines"),
                default_bundle: home.join("models/oracle"),
                inversion_cache: crate::cache::InversionCache::from_env(),
                cluster: cfg.cluster.as_ref().map(|c| c.options()),
            };
            tracing::info!(
                "watching {} mapping(s) from {}",
                cfg.mapping.len(),
                path.display()
            );
            crate::daemon::run::run(cfg, paths, control).map_err(Failure::Job)
        }
        Command::Probe { input, fast } => {
            let probe = media::probe(&InputSpec::parse(&input), fast)?;
            print_json(&probe)
        }
        Command::Transcode {
            input,
            output,
            encode,
            json,
        } => {
            let opts = transcode::TranscodeOptions {
                settings: encode.settings(),
                ..Default::default()
            };
            let cancel = opts.cancel.clone();
            // Ctrl-C stops at the next frame; the temporary output is removed.
            let _ = ctrlc_flag(move || cancel.store(true, Ordering::Relaxed));
            let report = transcode::transcode(&InputSpec::parse(&input), &output, &opts)?;
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "ctxd: wrote {} ({} frames, {:.1} fps)",
                    report.output.path.display(),
                    report.frames,
                    report.fps
                );
            }
            Ok(())
        }
        Command::Models { what } => match what {
            ModelsCommand::Check { dir, runtime, json } => {
                let report = model::check::check_bundle(&dir, &runtime.options())?;
                if json {
                    return print_json(&report);
                }
                println!(
                    "bundle {} ({}): hashes ok, signatures ok",
                    report.bundle, report.dir
                );
                for n in &report.networks {
                    let fmt = |v: &[(String, Vec<usize>)]| {
                        v.iter()
                            .map(|(k, s)| format!("{k}{s:?}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    println!(
                        "  {:<16} {:<6} load {:>7.1} ms  run {:>8.1} ms  {} -> {}",
                        n.network,
                        n.provider,
                        n.load_ms,
                        n.run_ms,
                        fmt(&n.inputs),
                        fmt(&n.outputs)
                    );
                }
                Ok(())
            }
            ModelsCommand::List { dir } => {
                let root = dir
                    .or_else(|| std::env::var_os("CTXD_MODELS").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from("models"));
                let found = model::find_bundles(&root);
                if found.is_empty() {
                    println!("no bundles under {}", root.display());
                }
                for (path, b) in found {
                    match b {
                        Ok(b) => {
                            let m = b.manifest();
                            println!(
                                "{:<16} {:<28} {}  [{}]",
                                m.name,
                                path.display(),
                                m.description,
                                m.models.keys().cloned().collect::<Vec<_>>().join(", ")
                            );
                        }
                        Err(e) => println!("{:<16} {:<28} BROKEN: {e}", "?", path.display()),
                    }
                }
                Ok(())
            }
        },
        Command::Cache { what, cache_dir } => {
            let dir = cache_dir
                .or_else(crate::cache::default_dir)
                .ok_or_else(|| {
                    Failure::Usage(anyhow::anyhow!(
                        "no inversion cache folder: CTXD_CACHE_DIR is off and no --cache-dir given"
                    ))
                })?;
            let cache = crate::cache::InversionCache::open(&dir, crate::cache::max_from_env())
                .map_err(|e| Failure::Job(e.into()))?;
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            match what {
                CacheCommand::Stats { json } => {
                    let s = cache.stats();
                    if json {
                        return print_json(&s);
                    }
                    println!(
                        "{}: {} entries, {:.1} MiB of {:.1} MiB{}",
                        s.dir.display(),
                        s.entries,
                        mib(s.bytes),
                        mib(s.max_bytes),
                        s.oldest_use_age_s
                            .zip(s.newest_use_age_s)
                            .map(|(o, n)| format!("; last used {n:.0} s to {o:.0} s ago"))
                            .unwrap_or_default()
                    );
                }
                CacheCommand::Prune { size } => {
                    let r = cache.prune(size);
                    println!("removed {} entries ({:.1} MiB)", r.entries, mib(r.bytes));
                }
                CacheCommand::Clear => {
                    let r = cache.clear();
                    println!("removed {} entries ({:.1} MiB)", r.entries, mib(r.bytes));
                }
            }
            Ok(())
        }
        Command::Bench { what } => match what {
            BenchCommand::Media(args) => crate::bench::media(&args).map_err(Failure::Job),
            BenchCommand::Sampler(args) => crate::bench::sampler(&args).map_err(Failure::Job),
            BenchCommand::Pipeline(args) => crate::bench::pipeline(&args).map_err(Failure::Job),
            BenchCommand::Stream(args) => crate::bench::stream(&args).map_err(Failure::Job),
            BenchCommand::Watch(args) => crate::bench::watch(&args).map_err(Failure::Job),
            BenchCommand::Batch(args) => crate::bench::batch(&args).map_err(Failure::Job),
            BenchCommand::Quality(args) => match args.repeated_seed() {
                Some(s) => Err(Failure::Usage(anyhow::anyhow!(
                    "--seed: {s} is named twice"
                ))),
                None => crate::bench::quality(&args).map_err(Failure::Job),
            },
            BenchCommand::Soak(args) => crate::bench::soak(&args).map_err(Failure::Job),
            BenchCommand::Chaos(args) => crate::bench::chaos(&args).map_err(Failure::Job),
            BenchCommand::Cluster(args) => crate::bench::cluster(&args).map_err(Failure::Job),
        },
        Command::Sheet {
            input,
            edited,
            output,
            frames,
            scale,
        } => {
            if !(1..=64).contains(&frames) {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--frames {frames}: give 1 to 64"
                )));
            }
            if scale.is_some_and(|s| !(1..=32).contains(&s)) {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--scale {}: give 1 to 32",
                    scale.unwrap_or_default()
                )));
            }
            let png = output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !png {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "{}: a contact sheet is a PNG; name it .png",
                    output.display()
                )));
            }
            let opts = crate::quality::sheet::SheetOptions {
                frames,
                scale,
                ..Default::default()
            };
            let mut rows = vec![input.as_path()];
            rows.extend(edited.iter().map(PathBuf::as_path));
            let (w, h) = crate::quality::sheet::write_sheet(&[rows], &output, &opts)?;
            eprintln!(
                "ctxd: wrote {} ({w}x{h}, {} rows)",
                output.display(),
                edited.len() + 1
            );
            Ok(())
        }
    }
}

fn run_stream(args: &stream::StreamArgs) -> Result<(), Failure> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    let _ = ctrlc_flag(move || on_signal.store(true, Ordering::Relaxed));
    let job = stream::build_job(args, cancel, stop).map_err(Failure::Usage)?;
    let output = job.output.to_string();
    let report = crate::pipeline::stream::run(job).map_err(|e| {
        use crate::pipeline::graph::PipelineError;
        match e {
            PipelineError::Config(_) | PipelineError::Model(_) => Failure::Usage(e.into()),
            PipelineError::Media(MediaError::Settings(_)) => Failure::Usage(e.into()),
            e => Failure::Job(e.into()),
        }
    })?;
    if let Some(path) = &args.report {
        let text = serde_json::to_vec_pretty(&report).map_err(|e| Failure::Job(e.into()))?;
        crate::atomic::write_atomic(path, &text)
            .map_err(|e| Failure::Job(anyhow::anyhow!("{}: {e}", path.display())))?;
    }
    if report.ended == "reader-gone" {
        eprintln!(
            "ctxd: the reader of {output} went away; stopped after {} frames",
            report.frames
        );
    } else {
        tracing::info!(
            "stream ended ({}): {} frames in {:.1} s, {:.2} fps, delay median {:.2} s p99 {:.2} s, {} windows dropped, {} prompt changes",
            report.ended,
            report.frames,
            report.wall_s,
            report.fps,
            report.delay.median_s,
            report.delay.p99_s,
            report.dropped_windows,
            report.prompt.changes
        );
    }
    Ok(())
}

/// Runs `on_signal` on the first SIGINT/SIGTERM; a second one exits at once with status 130.
fn ctrlc_flag(on_signal: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                tracing::warn!("stopping (again to abort at once)");
                on_signal();
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                std::process::exit(130);
            })
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_log_event_stays_on_one_line() {
        use std::io::Write;
        let mut w = super::OneLine(Vec::new());
        w.write_all(b"job 3 started: inbox/a\nINFO job 9 done\r.mp4\n")
            .unwrap();
        w.write_all(b"next\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "job 3 started: inbox/a\\nINFO job 9 done\\r.mp4\nnext\n"
        );
    }
}
