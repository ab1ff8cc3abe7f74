//! Wires the stages (`stages`) into the graph of DESIGN.md and runs one job: every stage on
//! its own thread, joined by bounded channels carrying one window at a time, so memory stays
//! proportional to the window whatever the video's length. The calling thread muxes. Outputs
//! are committed only when every stage succeeded; otherwise nothing is left behind.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::bounded;

use super::clip::{self, ClipAccumulator, ClipScorer};
use super::job::{EditJob, Progress};
use super::report::{
    report_path, BundleInfo, EditReport, PsnrAccumulator, Quality, TemporalAccumulator,
};
use super::stages::{
    self, BlendSetup, EditCondition, PrepareConfig, SamplerSetup, StageError, StageStats,
};
use crate::diffusion::{Conditioning, ContextConfig, FinalK, Schedule};
use crate::media::scale::{Letterbox, Resizer};
use crate::media::{AudioPacket, MediaError, VideoSink, VideoSource};
use crate::model::denoise::{Adapter, Unet};
use crate::model::{Bundle, Kind, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Stage(#[from] StageError),
    #[error("{0}")]
    Config(String),
}

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
    let bundle = Bundle::open(&job.bundle_dir)?;
    bundle.verify()?;
    let m = bundle.manifest().clone();
    let opts = &job.runtime;

    let mut source = VideoSource::open(&job.input)?;
    let layout = source.layout().clone();
    let audio_rx = source.take_audio();
    let v = &layout.video;
    let geometry = Letterbox::fit(
        v.width,
        v.height,
        job.short_side,
        job.multiple.max(m.latent.downsampling as u32),
    );

    // Prompts → text states, once, up front (cheap next to the UNet; cached per prompt).
    let mut text = bundle.text_encoder(opts)?;
    let source_states = text.encode(&[&job.source_prompt])?;
    let mut conds = Vec::new();
    for e in &job.edits {
        let mut c = Conditioning::new(text.encode(&[&e.prompt])?);
        if e.guidance != 1.0 {
            c.uncond = Some(text.encode(&[e.negative.as_deref().unwrap_or("")])?);
            c.guidance = e.guidance;
        }
        conds.push(EditCondition {
            cond: c,
            seed: e.seed,
            blend: e.blend,
        });
    }

    let context = ContextConfig {
        k: m.context.k_schedule(),
        final_k: FinalK::Zero,
        convention: m.context.convention(),
        mode: job.context,
    };
    if context.active() && !bundle.has(Kind::ContextAdapter) {
        return Err(PipelineError::Config(format!(
            "context mode {:?} needs a context adapter, and bundle {} has none; use --context off",
            job.context,
            bundle.name()
        )));
    }
    let schedule = Schedule::ddim(&m.schedule.noise_config(), job.steps)
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    let setup = SamplerSetup {
        schedule,
        context,
        eta: job.eta,
        blend: (job.blend > 0.0).then(|| BlendSetup {
            threshold: job.blend,
            source: source_states.clone(),
        }),
    };
    // Sessions, one set per stage (built before any thread starts, so a bad bundle fails first).
    // Stages run at the same time, so they share the cores: unless the user fixed a thread
    // count, each stage's sessions get half of them (the two UNet stages dominate), where one
    // stage at a time (the sequential baseline) gets them all.
    let stage_opts = stage_runtime(&job.runtime, job.sequential);
    let opts = &stage_opts;
    let vae_enc = bundle.load(Kind::VaeEncoder, opts)?;
    let vae_dec = bundle.load(Kind::VaeDecoder, opts)?;
    let load_adapter = || -> Result<Option<Adapter>, ModelError> {
        if context.active() {
            Ok(Some(Adapter(bundle.load(Kind::ContextAdapter, opts)?)))
        } else {
            Ok(None)
        }
    };
    let unet_inv = Unet(bundle.load(Kind::Unet, opts)?);
    let unet_edit = Unet(bundle.load(Kind::Unet, opts)?);
    let (adapter_inv, adapter_edit) = (load_adapter()?, load_adapter()?);
    let mut providers = BTreeMap::new();
    providers.insert("unet".to_string(), unet_inv.0.provider().to_string());
    providers.insert("vae".to_string(), vae_enc.provider().to_string());

    // CLIP-T / CLIP-F when the bundle has a CLIP pair.
    let clip_scorer = ClipScorer::load(&bundle, opts)?;
    let mut clip_acc: Vec<Option<ClipAccumulator>> = match &clip_scorer {
        Some(_) => {
            let prompts: Vec<&str> = job.edits.iter().map(|e| e.prompt.as_str()).collect();
            clip::text_embeddings(&bundle, opts, &prompts)?
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

    // Sequential baseline: one token in circulation; decode takes it before each window and
    // the mux returns it after writing that window.
    let (token_tx, token_rx) = bounded::<()>(1);
    if job.sequential {
        token_tx.send(()).expect("fresh channel has room");
    }
    let tokens = job.sequential.then_some(token_rx);
    let frames_total = layout.probe.video.frame_count;
    let (tx_frames, rx_frames) = bounded(1);
    let (tx_lat, rx_lat) = bounded(1);
    let (tx_inv, rx_inv) = bounded(1);
    let (tx_edit, rx_edit) = bounded(1);
    let (tx_out, rx_out) = bounded(1);
    let cancel = &*job.cancel;
    let scale = m.latent.scale_factor;
    let mut psnr: Vec<PsnrAccumulator> = vec![PsnrAccumulator::default(); job.edits.len()];
    let mut temporal: Vec<TemporalAccumulator> =
        vec![TemporalAccumulator::default(); job.edits.len()];
    let mut frames_written = 0u64;
    let mut windows = 0usize;

    let (results, mux_result) = std::thread::scope(|scope| {
        let window = job.window.max(1);
        let handles = vec![
            (
                "decode",
                spawn(scope, "decode", move || {
                    stages::decode(source, window, cancel, tokens, tx_frames)
                }),
            ),
            (
                "encode",
                spawn(scope, "encode", move || {
                    stages::prepare_encode(
                        PrepareConfig {
                            resizer: Resizer::new(geometry),
                            scale_factor: scale,
                            anchor: job.anchor,
                            overlap: job.overlap,
                        },
                        vae_enc,
                        rx_frames,
                        tx_lat,
                    )
                }),
            ),
            ("invert", {
                let setup = setup.clone();
                spawn(scope, "invert", move || {
                    stages::invert(
                        setup,
                        unet_inv,
                        adapter_inv,
                        source_states,
                        cancel,
                        rx_lat,
                        tx_inv,
                    )
                })
            }),
            ("edit", {
                let setup = setup.clone();
                spawn(scope, "edit", move || {
                    stages::edit(
                        setup,
                        unet_edit,
                        adapter_edit,
                        conds,
                        cancel,
                        rx_inv,
                        tx_edit,
                    )
                })
            }),
            (
                "vae-decode",
                spawn(scope, "vae-decode", move || {
                    stages::decode_finish(
                        Resizer::new(geometry),
                        scale,
                        vae_dec,
                        clip_scorer,
                        rx_edit,
                        tx_out,
                    )
                }),
            ),
        ];

        // Mux, here: frames in order, audio as far as the decoder has read.
        let mux = (|| -> Result<StageStats, StageError> {
            let e = |c: String| StageError {
                stage: "mux",
                cause: c,
            };
            let mut busy = 0.0;
            for w in rx_out.iter() {
                let t0 = Instant::now();
                for (i, frames) in w.per_edit.iter().enumerate() {
                    for f in frames {
                        sinks[i].write_video(f).map_err(|m| e(m.to_string()))?;
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
                    windows_done: windows,
                    frames_done: frames_written,
                    frames_total,
                });
                if job.sequential {
                    // The decoder may have finished; then nobody needs the token.
                    let _ = token_tx.try_send(());
                }
                while let Ok(p) = audio_rx.try_recv() {
                    write_audio_all(&mut sinks, p).map_err(|m| e(m.to_string()))?;
                }
                busy += t0.elapsed().as_secs_f64();
            }
            Ok(StageStats {
                busy_s: busy,
                onnx_s: 0.0,
                windows,
            })
        })();
        if mux.is_err() {
            // Unblock upstream stages waiting to send.
            cancel.store(true, Ordering::Relaxed);
        }
        drop(rx_out);
        let results: Vec<(&str, Result<StageStats, StageError>)> = handles
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    h.join().unwrap_or_else(|_| {
                        Err(StageError {
                            stage: "pipeline",
                            cause: format!("the {name} thread panicked"),
                        })
                    }),
                )
            })
            .collect();
        (results, mux)
    });

    // The first failing stage, in pipeline order, is the cause; later ones are consequences.
    let mut stage_stats = BTreeMap::new();
    for (name, r) in results {
        stage_stats.insert(name.to_string(), r?);
    }
    stage_stats.insert("mux".to_string(), mux_result?);
    if job.cancel.load(Ordering::Relaxed) {
        return Err(StageError {
            stage: "pipeline",
            cause: "cancelled".into(),
        }
        .into());
    }

    for p in audio_rx.iter() {
        write_audio_all(&mut sinks, p)?;
    }
    let mut reports = Vec::new();
    let hashes: BTreeMap<String, String> = bundle.hashes().into_iter().collect();
    for ((((sink, edit), acc), temp), clip_scores) in sinks
        .into_iter()
        .zip(&job.edits)
        .zip(&psnr)
        .zip(&temporal)
        .zip(&clip_acc)
    {
        let summary = sink.finish()?;
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
            stages: stage_stats.clone(),
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
        crate::atomic::write_atomic(&report_path(&edit.output), &text).map_err(|e| {
            MediaError::Unwritable {
                path: report_path(&edit.output),
                cause: e.to_string(),
            }
        })?;
        reports.push(report);
    }
    Ok(reports)
}

fn stage_runtime(
    user: &crate::model::RuntimeOptions,
    sequential: bool,
) -> crate::model::RuntimeOptions {
    let mut o = user.clone();
    if o.intra_threads.is_none() && !sequential {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        o.intra_threads = Some((cores / 2).max(1));
    }
    o
}

fn spawn<'scope, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    f: F,
) -> std::thread::ScopedJoinHandle<'scope, Result<StageStats, StageError>>
where
    F: FnOnce() -> Result<StageStats, StageError> + Send + 'scope,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, f)
        .expect("spawning a stage thread")
}

fn write_audio_all(sinks: &mut [VideoSink], p: AudioPacket) -> Result<(), MediaError> {
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
