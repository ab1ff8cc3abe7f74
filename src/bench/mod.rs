//! `ctxd bench`: what ctxd's parts cost, each measured against a baseline run in the same
//! process or run and reported as ratios (wall-clock numbers alone mean little on a shared
//! machine). One module per bench; the media, sampler and pipeline benches and the helpers
//! the others share are here.

mod batch;
mod chaos;
mod cluster;
mod harness;
mod media;
mod per_kind;
mod quality;
mod soak;
mod stream;
mod watch;

pub use batch::{batch, BatchBenchArgs};
pub use chaos::{chaos, ChaosBenchArgs};
pub use cluster::{cluster, ClusterBenchArgs};
pub use media::{media, MediaBenchArgs};
pub use quality::{quality, QualityBenchArgs};
pub use soak::{soak, SoakBenchArgs};
pub use stream::{run as stream, StreamBenchArgs};
pub use watch::{cpu_seconds, watch, WatchBenchArgs};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::media::{EncodeSettings, InputSpec};
use media::Memory;

/// The middle value (the upper one of an even count); NaN for none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The given folder (created), or a temporary one removed when the guard drops.
pub(crate) fn work_dir(given: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let t = tempfile::tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// What the benchmarks that drive the real binary share: the binary, the bundle's absolute
/// path, and a preset file in `dir` (context `source`, windows of 8).
pub(crate) fn binary_bench_setup(
    dir: &Path,
    bundle: &Path,
    steps: usize,
    guidance: f32,
    short_side: u32,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use anyhow::Context;
    let exe = std::env::current_exe()?;
    let bundle =
        std::fs::canonicalize(bundle).with_context(|| format!("bundle {}", bundle.display()))?;
    let preset = dir.join("bench-preset.toml");
    std::fs::write(
        &preset,
        format!(
            "steps = {steps}\nguidance = {guidance:?}\ncontext = \"source\"\nwindow = 8\nshort_side = {short_side}\nmultiple = 16\n"
        ),
    )?;
    Ok((exe, bundle, preset))
}

/// A 1280x720 30 fps clip with a moving test pattern and a stereo AAC tone.
pub(crate) fn generate_clip(dir: &Path, seconds: u32) -> Result<PathBuf> {
    let path = dir.join(format!("bench-720p-{seconds}s.mp4"));
    if path.exists() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".bench-720p-{seconds}s.part.mp4"));
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=1280x720:rate=30:duration={seconds}"),
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate=48000:duration={seconds}"),
        ])
        .args([
            "-ac",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "23",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&tmp)
        .status()
        .context(
            "running ffmpeg to generate a benchmark clip (is it installed? run scripts/setup)",
        )?;
    if !status.success() {
        bail!("ffmpeg failed to generate {}", path.display());
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[derive(Args, Debug)]
pub struct SamplerBenchArgs {
    /// Bundle to run (its UNet and context adapter).
    #[arg(long, default_value = "models/tiny", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Frames per window.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Latent height and width.
    #[arg(long, default_value_t = 32)]
    pub latent: usize,
    /// Classifier-free guidance weight (7.5 doubles the UNet batch).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Context mode: off, source or x0_pred (one adapter call per step).
    #[arg(long, default_value = "x0_pred")]
    pub context: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct SamplerBench {
    bundle: String,
    steps: usize,
    latent_shape: Vec<usize>,
    wall_ms_per_step: f64,
    unet_ms_per_step: f64,
    adapter_ms_per_step: f64,
    /// Everything outside ONNX Runtime: the step arithmetic, guidance, batching, copies.
    sampler_ms_per_step: f64,
    /// sampler / UNet: should be a small fraction.
    sampler_share_of_unet: f64,
}

/// `ctxd bench sampler`: the sampler's own time per step against the UNet's, in one run.
pub fn sampler(args: &SamplerBenchArgs) -> Result<()> {
    use crate::diffusion::{
        self, Conditioning, ContextConfig, FinalK, Models, RunConfig, Schedule, SeededNoise,
    };
    use crate::model::denoise::{Adapter, Unet};
    use crate::model::{Bundle, Kind, RuntimeOptions};

    let opts = RuntimeOptions::default();
    let bundle = Bundle::open(&args.bundle)?;
    let m = bundle.manifest();
    let mut unet = Unet::new(bundle.load(Kind::Unet, &opts)?);
    let mut adapter = if bundle.has(Kind::ContextAdapter) {
        Some(Adapter(bundle.load(Kind::ContextAdapter, &opts)?))
    } else {
        None
    };
    let mut text = bundle.text_encoder(&opts)?;
    let mode: diffusion::ContextMode = args.context.parse().map_err(anyhow::Error::msg)?;
    let context = ContextConfig {
        k: m.context.k_schedule(),
        final_k: FinalK::Zero,
        convention: m.context.convention(),
        mode: if adapter.is_some() {
            mode
        } else {
            diffusion::ContextMode::Off
        },
    };
    let shape = [1, m.latent.channels, args.frames, args.latent, args.latent];
    let mut rng = SeededNoise::new(0);
    let start: diffusion::Latent = rng.normal(&shape).into_dimensionality()?;
    let x0: diffusion::Latent = rng.normal(&shape).into_dimensionality()?;
    let cond = Conditioning {
        cond: text.encode(&["a red car driving on a road"])?,
        uncond: Some(text.encode(&[""])?),
        guidance: args.guidance,
    };
    let schedule = Schedule::ddim(&m.schedule.noise_config(), args.steps)?;
    let t = Instant::now();
    diffusion::sample(
        RunConfig {
            schedule: &schedule,
            context,
            eta: 0.0,
            x0_source: Some(&x0),
            keep_trajectory: false,
            layout: None,
        },
        Models {
            unet: &mut unet,
            adapter: adapter
                .as_mut()
                .map(|a| a as &mut dyn diffusion::ContextAdapter),
        },
        &start,
        &cond,
        None,
        &mut diffusion::no_progress,
    )?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let unet_ms = unet.busy().as_secs_f64() * 1e3;
    let adapter_ms = adapter
        .as_ref()
        .map(|a| a.0.busy().0.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    let n = args.steps as f64;
    let sampler_ms = (wall - unet_ms - adapter_ms).max(0.0);
    let r = SamplerBench {
        bundle: bundle.name().to_string(),
        steps: args.steps,
        latent_shape: shape.to_vec(),
        wall_ms_per_step: wall / n,
        unet_ms_per_step: unet_ms / n,
        adapter_ms_per_step: adapter_ms / n,
        sampler_ms_per_step: sampler_ms / n,
        sampler_share_of_unet: sampler_ms / unet_ms.max(1e-9),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "sampler bench ({}, latent {:?}, {} steps, guidance {}, context {})",
            r.bundle, r.latent_shape, r.steps, args.guidance, args.context
        );
        println!(
            "  per step: wall {:.2} ms = UNet {:.2} ms + adapter {:.2} ms + sampler {:.3} ms",
            r.wall_ms_per_step, r.unet_ms_per_step, r.adapter_ms_per_step, r.sampler_ms_per_step
        );
        println!("  sampler / UNet = {:.3}", r.sampler_share_of_unet);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PipelineBenchArgs {
    /// Bundle for the throughput comparison.
    #[arg(long, default_value = "models/tiny", value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: PathBuf,
    /// Length of the generated throughput clip (seconds, 640x360 at 24 fps).
    #[arg(long, default_value_t = 4)]
    pub seconds: u32,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Processing short side (small: the tiny UNet's attention is quadratic in pixels).
    #[arg(long, default_value_t = 64)]
    pub short_side: u32,
    /// Lengths (seconds) of the two 720p clips for the memory comparison (oracle bundle).
    #[arg(long, value_delimiter = ',', default_values_t = vec![20, 120])]
    pub memory_seconds: Vec<u32>,
    #[arg(long)]
    pub no_memory: bool,
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct PipelineBench {
    bundle: String,
    frames: u64,
    staged_fps: f64,
    sequential_fps: f64,
    /// staged / sequential: above 1 means the overlap of stages pays.
    overlap_gain: f64,
    /// What `--pipelining auto` picks on this host (true: staged).
    auto_pipelines: bool,
    /// Per stage: busy seconds and the part inside ONNX Runtime (staged run).
    stages: std::collections::BTreeMap<String, (f64, f64)>,
    /// ONNX Runtime time summed over stages / busy time summed over stages.
    onnx_share_of_busy: f64,
    /// ONNX Runtime time summed over stages / wall time (can exceed 1: stages overlap).
    onnx_per_wall: f64,
    /// Where the stages' busy time went: inside ONNX Runtime, in FFmpeg's stages (decode and
    /// mux: decoding, colour conversion, x264), and in ctxd's own code (everything else:
    /// the sampler's arithmetic, tensor conversions, resizing, CLIP preprocessing).
    busy_split: BusySplit,
    /// The same split for the run one window at a time (what `--pipelining auto` picks on a
    /// small CPU host), where the networks' stages do not compete for the cores.
    sequential_busy_split: BusySplit,
    cold_start: ColdStart,
    memory: Option<Memory>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BusySplit {
    onnx_s: f64,
    media_s: f64,
    ours_s: f64,
    /// ours / wall time of the staged run.
    ours_per_wall: f64,
    /// (media + ours) / wall time: everything outside ONNX Runtime.
    outside_onnx_per_wall: f64,
}

impl BusySplit {
    /// From one run's stages: ONNX Runtime's time in every stage, the rest of the decode and
    /// mux stages as FFmpeg's, the rest of the other stages as ctxd's.
    fn of(run: &crate::pipeline::report::EditReport) -> BusySplit {
        let onnx: f64 = run.stages.values().map(|v| v.onnx_s).sum();
        let busy: f64 = run.stages.values().map(|v| v.busy_s).sum();
        let media: f64 = ["decode", "mux"]
            .iter()
            .filter_map(|k| run.stages.get(*k))
            .map(|v| v.busy_s - v.onnx_s)
            .sum();
        let ours = busy - onnx - media;
        BusySplit {
            onnx_s: onnx,
            media_s: media,
            ours_s: ours,
            ours_per_wall: ours / run.wall_s,
            outside_onnx_per_wall: (ours + media) / run.wall_s,
        }
    }

    fn line(&self) -> String {
        format!(
            "ONNX Runtime {:.2} s, FFmpeg stages {:.2} s, ctxd's own code {:.2} s = {:.1} % of wall time (outside ONNX Runtime: {:.1} % of wall time)",
            self.onnx_s,
            self.media_s,
            self.ours_s,
            100.0 * self.ours_per_wall,
            100.0 * self.outside_onnx_per_wall
        )
    }
}

/// Loading every stage's networks, with ONNX Runtime's optimized-model cache off and then
/// filled (medians of `rounds` interleaved loads, after one load that fills the cache).
#[derive(Debug, Serialize)]
struct ColdStart {
    uncached_s: f64,
    cached_s: f64,
    /// uncached / cached: how much faster a second cold start of a bundle loads.
    speedup: f64,
    /// The same comparison summed over sessions (each session's own build time).
    session_seconds_uncached: f64,
    session_seconds_cached: f64,
    /// The same two loads with ONNX Runtime planning memory reuse, as it does unless ctxd turns
    /// that off (`model::reuse_plan`; None where ctxd cannot, and both runs below are alike).
    planned_uncached_s: Option<f64>,
    planned_cached_s: Option<f64>,
}

/// Times `StageModels::load` for `bundle` without and with the optimized-model cache.
fn cold_start(bundle_dir: &Path, steps: usize, rounds: usize) -> Result<ColdStart> {
    use crate::model::runtime::build_stats;
    use crate::model::{Bundle, RuntimeOptions};
    use crate::pipeline::graph::{sampler_setup, StageModels};
    let bundle = Bundle::open(bundle_dir)?;
    let setup = sampler_setup(
        &bundle,
        steps,
        0.0,
        1.0,
        crate::diffusion::ContextMode::Source,
        false,
        crate::diffusion::Inversion::Ddim,
    )?;
    let cache = tempfile::tempdir()?;
    let uncached = RuntimeOptions::default();
    let cached = RuntimeOptions {
        optimized_cache: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let planned = |o: &RuntimeOptions| RuntimeOptions {
        plan_memory_reuse: true,
        ..o.clone()
    };
    let (planned_uncached, planned_cached) = (planned(&uncached), planned(&cached));
    let compare_planning = crate::model::reuse_plan::planning_off();
    let session_s = |i: usize| build_stats()[i].1;
    let load = |o: &RuntimeOptions| -> Result<f64> {
        let t = Instant::now();
        drop(StageModels::load(&bundle, o, &setup, false, false)?);
        Ok(t.elapsed().as_secs_f64())
    };
    load(&uncached)?; // ONNX Runtime's own start-up, paid once per process
    load(&cached)?; // fills the cache
    let (mut a, mut b, mut sa, mut sb) = (vec![], vec![], 0.0, 0.0);
    let (mut pa, mut pb) = (vec![], vec![]);
    for _ in 0..rounds.max(1) {
        let s0 = session_s(2);
        a.push(load(&uncached)?);
        sa += session_s(2) - s0;
        let s0 = session_s(0);
        b.push(load(&cached)?);
        sb += session_s(0) - s0;
        if compare_planning {
            pa.push(load(&planned_uncached)?);
            pb.push(load(&planned_cached)?);
        }
    }
    let (uncached_s, cached_s) = (median(a), median(b));
    Ok(ColdStart {
        uncached_s,
        cached_s,
        speedup: uncached_s / cached_s,
        session_seconds_uncached: sa / rounds.max(1) as f64,
        session_seconds_cached: sb / rounds.max(1) as f64,
        planned_uncached_s: compare_planning.then(|| median(pa)),
        planned_cached_s: compare_planning.then(|| median(pb)),
    })
}

pub(crate) fn edit_job(
    input: &Path,
    bundle: &Path,
    out: &Path,
    steps: usize,
    short_side: u32,
    pipelining: crate::model::Pipelining,
) -> crate::pipeline::job::EditJob {
    use crate::pipeline::job::{EditJob, EditTarget};
    EditJob {
        input: InputSpec::File(input.to_path_buf()),
        bundle_dir: bundle.to_path_buf(),
        runtime: crate::model::RuntimeOptions {
            pipelining,
            ..Default::default()
        },
        source_prompt: "a video".into(),
        edits: vec![EditTarget {
            name: "bench".into(),
            prompt: "a red car".into(),
            negative: None,
            guidance: 7.5,
            seed: 0,
            output: out.to_path_buf(),
            blend: true,
            strength: None,
            blend_threshold: None,
            layout: None,
            source_detail: None,
        }],
        steps,
        eta: 0.0,
        inversion: Default::default(),
        strength: 1.0,
        context: crate::diffusion::ContextMode::Source,
        window: 8,
        overlap: 0,
        anchor: true,
        short_side: Some(short_side),
        multiple: 16,
        encode: EncodeSettings {
            preset: Some("veryfast".into()),
            ..Default::default()
        },
        blend: 0.0,
        measure_reconstruction: false,
        spec_json: serde_json::Value::Null,
        cancel: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        // Benchmarks measure the work itself, never a cache hit.
        cache: None,
    }
}

/// `ctxd bench pipeline`: the staged pipeline against the same stages without overlap, the
/// share of time inside ONNX Runtime, and peak memory for a short versus a long input.
pub fn pipeline(args: &PipelineBenchArgs) -> Result<()> {
    let (dir, _tmp) = work_dir(args.work_dir.as_deref())?;
    let clip = dir.join(format!("pipe-{}s.mp4", args.seconds));
    if !clip.exists() {
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i"])
            .arg(format!(
                "testsrc2=size=640x360:rate=24:duration={}",
                args.seconds
            ))
            .args(["-c:v", "libx264", "-preset", "ultrafast"])
            .arg(&clip)
            .status()?;
        if !status.success() {
            bail!("ffmpeg failed to make {}", clip.display());
        }
    }
    let staged = crate::pipeline::graph::run(
        &edit_job(
            &clip,
            &args.bundle,
            &dir.join("staged.mp4"),
            args.steps,
            args.short_side,
            // Overlapped whatever the host: that is what this run measures.
            crate::model::Pipelining::On,
        ),
        &|_| {},
    )?;
    let sequential = crate::pipeline::graph::run(
        &edit_job(
            &clip,
            &args.bundle,
            &dir.join("seq.mp4"),
            args.steps,
            args.short_side,
            crate::model::Pipelining::Off,
        ),
        &|_| {},
    )?;
    let (s, q) = (&staged[0], &sequential[0]);
    let stages: std::collections::BTreeMap<String, (f64, f64)> = s
        .stages
        .iter()
        .map(|(k, v)| (k.clone(), (v.busy_s, v.onnx_s)))
        .collect();
    let busy_split = BusySplit::of(s);
    let onnx = busy_split.onnx_s;
    let busy = onnx + busy_split.media_s + busy_split.ours_s;
    let sequential_busy_split = BusySplit::of(q);
    let cold_start = cold_start(&args.bundle, args.steps, 3)?;
    let memory = if args.no_memory {
        None
    } else {
        let [short, long] = args.memory_seconds[..] else {
            bail!("--memory-seconds takes two lengths, e.g. 20,120");
        };
        let a = generate_clip(&dir, short)?;
        let b = generate_clip(&dir, long)?;
        let rss = |input: &Path, out: &Path| -> Result<f64> {
            let exe = std::env::current_exe()?;
            let child = Command::new(exe)
                .args(["-q", "edit"])
                .arg(input)
                .args(["--bundle"])
                .arg(crate::cli::edit::home().join("models/oracle"))
                .args([
                    "--source",
                    "gray",
                    "--prompt",
                    "red",
                    "--steps",
                    "4",
                    "--context",
                    "off",
                ])
                .args(["--short-side", "256"])
                .arg("-o")
                .arg(out)
                .spawn()?;
            wait_rss(child.id() as libc::pid_t)
        };
        let (ra, rb) = (
            rss(&a, &dir.join("m-short.mp4"))?,
            rss(&b, &dir.join("m-long.mp4"))?,
        );
        Some(Memory {
            short_seconds: short,
            long_seconds: long,
            short_peak_rss_mib: ra,
            long_peak_rss_mib: rb,
            ratio: rb / ra,
        })
    };
    let r = PipelineBench {
        bundle: s.bundle.name.clone(),
        frames: s.frames,
        staged_fps: s.frames as f64 / s.wall_s,
        sequential_fps: q.frames as f64 / q.wall_s,
        overlap_gain: q.wall_s / s.wall_s,
        auto_pipelines: crate::model::Pipelining::Auto.resolve(crate::model::Device::Auto),
        onnx_share_of_busy: onnx / busy.max(1e-9),
        onnx_per_wall: onnx / s.wall_s,
        stages,
        busy_split,
        sequential_busy_split,
        cold_start,
        memory,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "pipeline bench ({}, {} frames, {} steps, short side {})",
            r.bundle, r.frames, args.steps, args.short_side
        );
        println!("  staged:     {:.2} fps", r.staged_fps);
        println!(
            "  sequential: {:.2} fps   gain from overlap = {:.2}x   (--pipelining auto here: {})",
            r.sequential_fps,
            r.overlap_gain,
            if r.auto_pipelines {
                "staged"
            } else {
                "sequential"
            }
        );
        println!(
            "  ONNX Runtime: {:.0} % of stage busy time, {:.2}x wall time",
            100.0 * r.onnx_share_of_busy,
            r.onnx_per_wall
        );
        for (k, (b, o)) in &r.stages {
            println!("    {k:<11} busy {b:>7.2} s  onnx {o:>7.2} s");
        }
        println!("  busy time, staged: {}", r.busy_split.line());
        println!(
            "  busy time, sequential: {}",
            r.sequential_busy_split.line()
        );
        let c = &r.cold_start;
        println!(
            "  cold start (every stage's sessions): {:.3} s without the optimized-model cache, {:.3} s with it = {:.2}x (session build seconds {:.3} -> {:.3})",
            c.uncached_s, c.cached_s, c.speedup, c.session_seconds_uncached, c.session_seconds_cached
        );
        if let (Some(u), Some(k)) = (c.planned_uncached_s, c.planned_cached_s) {
            println!(
                "    with ONNX Runtime's memory-reuse planning (CTXD_ORT_MEM_REUSE=1): {u:.3} s and {k:.3} s = {:.2}x; cold start {:.2}x faster without it",
                u / k,
                k / c.cached_s
            );
        }
        if let Some(m) = &r.memory {
            println!(
                "  peak RSS: {} s input {:.1} MiB, {} s input {:.1} MiB, ratio {:.2}",
                m.short_seconds, m.short_peak_rss_mib, m.long_seconds, m.long_peak_rss_mib, m.ratio
            );
        }
    }
    Ok(())
}

pub(crate) fn wait_rss(pid: libc::pid_t) -> Result<f64> {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child ctxd failed (status {status})");
    }
    Ok(usage.ru_maxrss as f64 / 1024.0)
}
