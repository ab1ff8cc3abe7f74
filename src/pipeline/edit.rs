//! One `ctxd edit` job on the engine (`graph`): a finite input, every edit's output written
//! to a temporary file and the whole set (outputs and their JSON reports) committed only
//! when every stage and every output succeeded (otherwise nothing is left behind).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::clip::{self, ClipAccumulator};
use super::graph::{
    geometry, run_graph, sampler_setup, seconds_per_tick, Graph, PipelineError, StageModels,
};
use super::job::{EditJob, Phase, Progress};
use super::prompts::{EditCondition, EditControls, FixedPrompts, WindowConditions};
use super::report::{
    report_path, BundleInfo, EditReport, PsnrAccumulator, Quality, TemporalAccumulator,
};
use super::stages::{CacheUse, DecodeConfig, Dropped, LagPolicy, PrepareConfig, StageError};
use super::windows::{Anchor, WindowPlanner};
use crate::diffusion::Conditioning;
use crate::media::scale::Resizer;
use crate::media::{AudioPacket, MediaError, VideoSink, VideoSource};
use crate::model::Bundle;

/// Runs `job`; returns the reports (also written beside each output).
///
/// # Errors
/// The first failure, by stage order, naming the stage (or the file) and the cause. No output
/// is left on error or cancellation.
pub fn run(job: &EditJob, progress: &dyn Fn(Progress)) -> Result<Vec<EditReport>, PipelineError> {
    let started = Instant::now();
    if job.edits.is_empty() {
        return Err(PipelineError::Config(
            "nothing to do: no edit prompts".into(),
        ));
    }
    progress(Progress {
        phase: Phase::Loading,
        windows_done: 0,
        frames_done: 0,
        frames_total: None,
    });
    let bundle = Bundle::open(&job.bundle_dir)?;
    bundle.verify()?;
    let scale_factor = bundle.manifest().latent.scale_factor;

    let mut source = VideoSource::open(&job.input)?;
    let layout = source.layout().clone();
    let audio_rx = source.take_audio();
    let geometry = geometry(&layout.video, job.short_side, job.multiple, &bundle);

    // Prompts → text states, once, up front (cheap next to the UNet).
    let mut text = bundle.text_encoder(&job.runtime)?;
    let mut edits = Vec::new();
    for (e, steps) in job.edits.iter().zip(job.partial_steps()) {
        let mut c = Conditioning::new(text.encode(&[&e.prompt])?);
        if e.guidance != 1.0 {
            c.uncond = Some(text.encode(&[e.negative.as_deref().unwrap_or("")])?);
            c.guidance = e.guidance;
        }
        edits.push(EditCondition {
            cond: c,
            seed: e.seed,
            blend: job.blend_of(e),
            steps,
            controls: EditControls {
                layout: e.layout,
                source_detail: e.source_detail,
            },
        });
    }
    let conditions = Arc::new(WindowConditions {
        version: 0,
        source: text.encode(&[&job.source_prompt])?,
        edits,
        prompts: job.edits.iter().map(|e| e.prompt.clone()).collect(),
    });
    drop(text);

    let setup = sampler_setup(
        &bundle,
        job.steps,
        job.eta,
        job.inversion_strength(),
        job.context,
        job.keeps_trajectory(),
        job.inversion,
    )?
    .with_inversion_seed(job.inversion_seed());
    let cache = match &job.cache {
        Some(c) => Some(CacheUse {
            cache: c.clone(),
            settings: inversion_settings(&bundle, job, &geometry)?,
        }),
        None => None,
    };
    let anchor = if job.anchor {
        Anchor::First
    } else {
        Anchor::None
    };
    let first_window = anchor.first_window(job.window, job.overlap);
    let cached = cache
        .as_ref()
        .is_some_and(|c| first_window_cached(job, first_window, c));
    // One window at a time (`--pipelining off`, or auto on a small host): each stage gets
    // every core. A clip of one window cannot overlap its stages anyway.
    let sequential = !job.runtime.pipelining.resolve(job.runtime.device);
    let one_window = layout
        .probe
        .video
        .frame_count
        .is_some_and(|n| n <= first_window as u64);
    let one_at_a_time = sequential || one_window;
    let models = StageModels::load(&bundle, &job.runtime, &setup, one_at_a_time, cached)?;
    let providers = models.providers.clone();
    // CLIP-T / CLIP-F when the bundle has a CLIP pair.
    let mut clip_acc: Vec<Option<ClipAccumulator>> = match &models.clip {
        Some(_) => {
            let prompts: Vec<&str> = job.edits.iter().map(|e| e.prompt.as_str()).collect();
            clip::text_embeddings(&bundle, &job.runtime, &prompts)?
                .into_iter()
                .map(|t| Some(ClipAccumulator::new(t)))
                .collect()
        }
        None => vec![None; job.edits.len()],
    };

    let mut sinks = Vec::new();
    for e in &job.edits {
        sinks.push(VideoSink::create(&e.output, &layout, &job.encode)?);
    }

    let frames_total = layout.probe.video.frame_count;
    let mut psnr: Vec<PsnrAccumulator> = vec![PsnrAccumulator::default(); job.edits.len()];
    let mut temporal: Vec<TemporalAccumulator> =
        vec![TemporalAccumulator::default(); job.edits.len()];
    let mut frames_written = 0u64;
    let mut windows = 0usize;
    let dropped = Dropped::default();
    let tb = layout.video.time_base;

    let graph = Graph {
        frames: Box::new(source),
        decode: DecodeConfig {
            window: job.window,
            first_window,
            cancel: &job.cancel,
            stop: None,
            lag: LagPolicy::Wait,
            dropped: &dropped,
            seconds_per_tick: seconds_per_tick(tb),
            hash_content: cache.is_some(),
        },
        prepare: PrepareConfig {
            resizer: Resizer::new(geometry),
            scale_factor,
            planner: WindowPlanner::new(anchor, job.overlap),
        },
        setup,
        models,
        prompts: Box::new(FixedPrompts(conditions)),
        late: None,
        cache,
        cancel: &job.cancel,
        sequential,
    };
    // Mux, here: frames in order, audio as far as the decoder has read.
    let mut mux = |w: super::stages::WindowOutput| -> Result<(), StageError> {
        let e = |m: MediaError| StageError::media("mux", &m);
        for (i, frames) in w.per_edit.iter().enumerate() {
            for f in frames {
                sinks[i].write_video(f).map_err(e)?;
            }
            temporal[i].add_window(frames, &w.sources);
            if let (Some(acc), Some(emb)) = (clip_acc[i].as_mut(), w.clip.get(i)) {
                acc.add(emb);
            }
            if job.measure_reconstruction {
                for (out, src) in frames.iter().zip(&w.sources) {
                    psnr[i].add(&out.data, &src.data);
                }
            }
        }
        frames_written += w.sources.len() as u64;
        windows += 1;
        progress(Progress {
            phase: Phase::Editing,
            windows_done: windows,
            frames_done: frames_written,
            frames_total,
        });
        while let Ok(p) = audio_rx.try_recv() {
            write_audio_all(&mut sinks, p).map_err(e)?;
        }
        Ok(())
    };
    // Loaded: the job is editing from here on (status shows it before the first window ends).
    progress(Progress {
        phase: Phase::Editing,
        windows_done: 0,
        frames_done: 0,
        frames_total,
    });
    let stage_stats = run_graph(graph, &mut mux)?;
    progress(Progress {
        phase: Phase::Writing,
        windows_done: windows,
        frames_done: frames_written,
        frames_total,
    });

    for p in audio_rx.iter() {
        write_audio_all(&mut sinks, p)?;
    }
    let mut reports = Vec::new();
    // Every output and its report appear together, or none does (a failure finishing the
    // second edit must not leave the first edit's file beside the error).
    let mut set = Vec::new();
    let hashes: BTreeMap<String, String> = bundle.hashes().into_iter().collect();
    for ((((sink, edit), acc), temp), clip_scores) in sinks
        .into_iter()
        .zip(&job.edits)
        .zip(&psnr)
        .zip(&temporal)
        .zip(&clip_acc)
    {
        let (summary, staged) = sink.finish_unpublished()?;
        set.extend(staged);
        let report = EditReport {
            ctxd_version: env!("CARGO_PKG_VERSION"),
            output: summary,
            input: layout.probe.clone(),
            edit: edit.clone(),
            source_prompt: job.source_prompt.clone(),
            job: job.spec_json.clone(),
            bundle: BundleInfo {
                name: bundle.name().to_string(),
                dir: bundle.dir().display().to_string(),
                sha256: hashes.clone(),
                providers: providers.clone(),
            },
            frames: frames_written,
            windows,
            wall_s: started.elapsed().as_secs_f64(),
            pipelined: !one_at_a_time,
            huge_pages: crate::huge_pages::in_use(),
            stages: stage_stats.clone(),
            inversion_cache: stage_stats.get("invert").and_then(|s| s.cache),
            quality: Quality {
                temporal: temp.result(),
                clip: clip_scores.as_ref().and_then(ClipAccumulator::result),
                reconstruction_psnr_db: if job.measure_reconstruction {
                    acc.psnr()
                } else {
                    None
                },
            },
        };
        let text =
            serde_json::to_vec_pretty(&report).map_err(|e| PipelineError::Config(e.to_string()))?;
        let at = report_path(&edit.output);
        set.push(
            crate::atomic::staged(&at, &text).map_err(|e| MediaError::Unwritable {
                path: at.clone(),
                cause: e.to_string(),
            })?,
        );
        reports.push(report);
    }
    crate::atomic::commit_set(set).map_err(|(path, e)| MediaError::Unwritable {
        path,
        cause: e.to_string(),
    })?;
    Ok(reports)
}

/// Whether the first window's inversion is in the cache (a second prompt over the same
/// video): then the edit stage will be the only busy one. Reads the first window of a file
/// once more; never a stream (stdin, URL) that cannot be read twice.
fn first_window_cached(job: &EditJob, first_window: usize, c: &CacheUse) -> bool {
    if job.input.as_path().is_none() {
        return false;
    }
    let Ok(source) = VideoSource::open(&job.input) else {
        return false;
    };
    let frames: Vec<_> = source.take(first_window).map_while(Result::ok).collect();
    !frames.is_empty()
        && c.cache
            .contains(&c.key(&super::stages::chain_frames(&[0; 32], &frames)))
}

/// The digest of everything but the frames that a window's inversion depends on: the
/// bundle (its manifest, which holds every network's hash, the schedule and the latent
/// scale, and its tokenizer), the inversion prompt and settings, the processing size and the
/// window plan. With the frames' content chain (`stages::CacheUse::key`) it keys the cache.
///
/// # Errors
/// The bundle's manifest or tokenizer cannot be read.
pub fn inversion_settings(
    bundle: &Bundle,
    job: &EditJob,
    geometry: &crate::media::scale::Letterbox,
) -> Result<[u8; 32], PipelineError> {
    use sha2::{Digest, Sha256};
    let mut settings = serde_json::json!({
        "format": 2,
        "ctxd": env!("CARGO_PKG_VERSION"),
        "bundle": bundle.identity()?,
        "source": job.source_prompt,
        "steps": job.steps,
        "strength": job.inversion_strength(),
        "context": crate::pipeline::spec::context_name(job.context),
        "trajectory": job.keeps_trajectory(),
        "window": job.window,
        "overlap": job.overlap,
        "anchor": job.anchor,
        "canvas": [geometry.src_w, geometry.src_h, geometry.content_w, geometry.content_h,
                   geometry.canvas_w, geometry.canvas_h],
    });
    // Named only when it is not DDIM, so DDIM entries keep the keys they always had.
    if job.inversion != crate::diffusion::Inversion::Ddim {
        settings["inversion"] = job.inversion.to_string().into();
        // Named only when it is not 0, so entries made before it was a setting keep their keys.
        if job.inversion_seed() != 0 {
            settings["inversion_seed"] = job.inversion_seed().into();
        }
    }
    Ok(Sha256::digest(settings.to_string().as_bytes()).into())
}

/// Writes one audio packet to every sink (a copy each but the last).
pub fn write_audio_all(sinks: &mut [VideoSink], p: AudioPacket) -> Result<(), MediaError> {
    let n = sinks.len();
    let mut p = Some(p);
    for (i, s) in sinks.iter_mut().enumerate() {
        let packet = if i + 1 == n {
            p.take().expect("one packet per sink")
        } else {
            let q = p.as_ref().expect("one packet per sink");
            AudioPacket {
                track: q.track,
                packet: q.packet.clone(),
            }
        };
        s.write_audio(packet)?;
    }
    Ok(())
}
