//! The stages of DESIGN.md's data flow, each a function run on its own thread, taking a
//! receiver and a sender; a stage ends when its input ends (the sender upstream was dropped)
//! and drops its own sender so the next one ends too. Each owns the sessions it needs.
//!
//! decode → prepare+encode (scale, normalise, VAE encode) → invert (UNet, adapter) → edit
//! (UNet, adapter, per prompt) → vae-decode+finish (VAE decode, scale back) → mux (caller)

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ndarray::{concatenate, s, Axis};

use super::tensor;
use crate::diffusion::{
    self, Blend, Conditioning, ContextConfig, Latent, Models, RunConfig, Schedule, SeededNoise,
};
use crate::media::scale::Resizer;
use crate::media::{RgbFrame, VideoSource};
use crate::model::denoise::{Adapter, Unet};
use crate::model::{Input, Network};

/// A stage's failure: which stage and why.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {cause}")]
pub struct StageError {
    pub stage: &'static str,
    pub cause: String,
}

pub type StageResult = Result<StageStats, StageError>;

/// Time a stage spent working (not waiting on channels).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageStats {
    pub busy_s: f64,
    pub onnx_s: f64,
    pub windows: usize,
}

fn err(stage: &'static str) -> impl Fn(String) -> StageError {
    move |cause| StageError { stage, cause }
}

/// New frames of one window, in presentation order.
pub struct WindowFrames {
    pub index: usize,
    pub frames: Vec<RgbFrame>,
}

/// A window's clean latent, with `context` leading frames (anchor, overlap) that are there for
/// consistency only and produce no output.
pub struct WindowLatents {
    pub index: usize,
    pub frames: Vec<RgbFrame>,
    pub x0: Latent,
    pub context: usize,
}

pub struct WindowInverted {
    pub latents: WindowLatents,
    pub x_t: Latent,
    /// The inversion trajectory (clean latent first), kept only for local blending.
    pub trajectory: Vec<Latent>,
}

pub struct WindowEdited {
    pub index: usize,
    pub frames: Vec<RgbFrame>,
    pub context: usize,
    pub per_edit: Vec<Latent>,
}

/// Output frames of one window, per edit, at the source's size and timestamps.
pub struct WindowOutput {
    pub index: usize,
    pub sources: Vec<RgbFrame>,
    pub per_edit: Vec<Vec<RgbFrame>>,
    /// CLIP image embeddings of the output frames, per edit (empty without a CLIP pair).
    pub clip: Vec<Vec<Vec<f32>>>,
}

/// Sends, or reports that downstream is gone (it failed, and says why itself).
fn send<T>(tx: &Sender<T>, v: T) -> bool {
    tx.send(v).is_ok()
}

pub fn decode(
    mut source: VideoSource,
    window: usize,
    cancel: &AtomicBool,
    tokens: Option<Receiver<()>>,
    tx: Sender<WindowFrames>,
) -> StageResult {
    let e = err("decode");
    let mut stats = StageStats::default();
    let mut working = Instant::now();
    let mut batch = Vec::with_capacity(window);
    let mut index = 0;
    for frame in source.by_ref() {
        if cancel.load(Ordering::Relaxed) {
            return Err(e("cancelled".into()));
        }
        if batch.is_empty() {
            if let Some(t) = &tokens {
                // Sequential baseline: wait until the previous window is fully written.
                if t.recv().is_err() {
                    return Ok(stats);
                }
            }
        }
        batch.push(frame.map_err(|m| e(m.to_string()))?);
        if batch.len() == window {
            stats.windows += 1;
            // Busy = decoding, not waiting for the next stage to take the window.
            stats.busy_s += working.elapsed().as_secs_f64();
            if !send(
                &tx,
                WindowFrames {
                    index,
                    frames: std::mem::take(&mut batch),
                },
            ) {
                return Ok(stats);
            }
            index += 1;
            working = Instant::now();
        }
    }
    if !batch.is_empty() {
        stats.windows += 1;
        send(
            &tx,
            WindowFrames {
                index,
                frames: batch,
            },
        );
    }
    stats.busy_s += working.elapsed().as_secs_f64();
    Ok(stats)
}

pub struct PrepareConfig {
    pub resizer: Resizer,
    pub scale_factor: f32,
    pub anchor: bool,
    pub overlap: usize,
}

pub fn prepare_encode(
    mut cfg: PrepareConfig,
    mut vae: Network,
    rx: Receiver<WindowFrames>,
    tx: Sender<WindowLatents>,
) -> StageResult {
    let e = err("encode");
    let mut stats = StageStats::default();
    let mut anchor: Option<Latent> = None;
    let mut previous: Option<Latent> = None;
    for w in rx.iter() {
        let t0 = Instant::now();
        let canvas: Vec<RgbFrame> = w
            .frames
            .iter()
            .map(|f| cfg.resizer.to_canvas(f))
            .collect::<Result<_, _>>()
            .map_err(|m| e(m.to_string()))?;
        let pixels = tensor::frames_to_tensor(&canvas);
        let mean = vae
            .run_one(
                vec![("sample", Input::F32(pixels.into_dyn()))],
                "latent_mean",
            )
            .map_err(|m| e(m.to_string()))?
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|m| e(m.to_string()))?
            * cfg.scale_factor;
        let new = tensor::to_video_latent(&mean);
        // Context frames: the first frame of the video (anchor) and the tail of the previous
        // window (overlap), ahead of this window's new frames.
        let mut parts: Vec<Latent> = Vec::new();
        if cfg.anchor && w.index > 0 {
            if let Some(a) = &anchor {
                parts.push(a.clone());
            }
        }
        if cfg.overlap > 0 {
            if let Some(p) = &previous {
                let f = p.shape()[2];
                parts.push(
                    p.slice(s![.., .., f.saturating_sub(cfg.overlap).., .., ..])
                        .to_owned(),
                );
            }
        }
        let context: usize = parts.iter().map(|p| p.shape()[2]).sum();
        parts.push(new.clone());
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let x0 = concatenate(Axis(2), &views).map_err(|m| e(m.to_string()))?;
        if anchor.is_none() {
            anchor = Some(new.slice(s![.., .., 0..1, .., ..]).to_owned());
        }
        previous = Some(new);
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        if !send(
            &tx,
            WindowLatents {
                index: w.index,
                frames: w.frames,
                x0,
                context,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = vae.busy().0.as_secs_f64();
    Ok(stats)
}

/// What the invert and edit stages share.
#[derive(Clone)]
pub struct SamplerSetup {
    pub schedule: Schedule,
    pub context: ContextConfig,
    pub eta: f64,
    /// Local blending (`diffusion::blend`), when on.
    pub blend: Option<BlendSetup>,
}

/// Local blending: the mask threshold and the source prompt's states the mask compares with.
#[derive(Clone)]
pub struct BlendSetup {
    pub threshold: f32,
    pub source: ndarray::Array3<f32>,
}

fn progress_cb<'a>(
    cancel: &'a AtomicBool,
) -> impl FnMut(&diffusion::StepInfo) -> ControlFlow<()> + 'a {
    move |_| {
        if cancel.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn busy(unet: &Unet, adapter: &Option<Adapter>) -> Duration {
    unet.0.busy().0 + adapter.as_ref().map(|a| a.0.busy().0).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
pub fn invert(
    setup: SamplerSetup,
    mut unet: Unet,
    mut adapter: Option<Adapter>,
    source_states: ndarray::Array3<f32>,
    cancel: &AtomicBool,
    rx: Receiver<WindowLatents>,
    tx: Sender<WindowInverted>,
) -> StageResult {
    let e = err("invert");
    let mut stats = StageStats::default();
    let cond = Conditioning::new(source_states);
    for w in rx.iter() {
        let t0 = Instant::now();
        let out = diffusion::invert(
            RunConfig {
                schedule: &setup.schedule,
                context: setup.context,
                eta: 0.0,
                x0_source: Some(&w.x0),
                keep_trajectory: setup.blend.is_some(),
            },
            Models {
                unet: &mut unet,
                adapter: adapter
                    .as_mut()
                    .map(|a| a as &mut dyn diffusion::ContextAdapter),
            },
            &w.x0,
            &cond,
            &mut progress_cb(cancel),
        )
        .map_err(|m| e(m.to_string()))?;
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        if !send(
            &tx,
            WindowInverted {
                latents: w,
                x_t: out.latent,
                trajectory: out.trajectory,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = busy(&unet, &adapter).as_secs_f64();
    Ok(stats)
}

pub struct EditCondition {
    pub cond: Conditioning,
    pub seed: u64,
    /// Local blending applies (when the setup has it).
    pub blend: bool,
}

pub fn edit(
    setup: SamplerSetup,
    mut unet: Unet,
    mut adapter: Option<Adapter>,
    edits: Vec<EditCondition>,
    cancel: &AtomicBool,
    rx: Receiver<WindowInverted>,
    tx: Sender<WindowEdited>,
) -> StageResult {
    let e = err("edit");
    let mut stats = StageStats::default();
    for w in rx.iter() {
        let t0 = Instant::now();
        let mut per_edit = Vec::with_capacity(edits.len());
        for ed in &edits {
            // A seed per window and edit: reproducible, and windows do not share noise.
            let mut noise = SeededNoise::new(
                ed.seed ^ (w.latents.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let run = RunConfig {
                schedule: &setup.schedule,
                context: setup.context,
                eta: setup.eta,
                x0_source: Some(&w.latents.x0),
                keep_trajectory: false,
            };
            // The mask first: it needs the UNet alone, the sampler then borrows it with the adapter.
            let mask = match setup.blend.as_ref().filter(|_| ed.blend) {
                None => None,
                Some(b) => Some(
                    diffusion::edit_mask(
                        &mut unet,
                        &setup.schedule,
                        &w.latents.x0,
                        &b.source,
                        &ed.cond.cond,
                        b.threshold,
                    )
                    .map_err(|m| e(m.to_string()))?,
                ),
            };
            let models = Models {
                unet: &mut unet,
                adapter: adapter
                    .as_mut()
                    .map(|a| a as &mut dyn diffusion::ContextAdapter),
            };
            let (x_t, cond, mut steps) = (&w.x_t, &ed.cond, progress_cb(cancel));
            let out = match &mask {
                None => diffusion::sample(run, models, x_t, cond, Some(&mut noise), &mut steps),
                Some(mask) => diffusion::sample_blended(
                    run,
                    models,
                    x_t,
                    cond,
                    Some(&mut noise),
                    &Blend {
                        mask,
                        inversion: &w.trajectory,
                    },
                    &mut steps,
                ),
            }
            .map_err(|m| e(m.to_string()))?;
            per_edit.push(out.latent);
        }
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        let WindowInverted { latents, .. } = w;
        if !send(
            &tx,
            WindowEdited {
                index: latents.index,
                frames: latents.frames,
                context: latents.context,
                per_edit,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = busy(&unet, &adapter).as_secs_f64();
    Ok(stats)
}

pub fn decode_finish(
    mut resizer: Resizer,
    scale_factor: f32,
    mut vae: Network,
    mut clip: Option<super::clip::ClipScorer>,
    rx: Receiver<WindowEdited>,
    tx: Sender<WindowOutput>,
) -> StageResult {
    let e = err("vae-decode");
    let mut stats = StageStats::default();
    for w in rx.iter() {
        let t0 = Instant::now();
        let mut per_edit = Vec::with_capacity(w.per_edit.len());
        let mut clip_embeds = Vec::new();
        for lat in &w.per_edit {
            let frames_lat =
                tensor::to_frame_latents(&lat.slice(s![.., .., w.context.., .., ..]).to_owned())
                    / scale_factor;
            let pixels = vae
                .run_one(
                    vec![("latent_sample", Input::F32(frames_lat.into_dyn()))],
                    "sample",
                )
                .map_err(|m| e(m.to_string()))?;
            let g = resizer.geometry();
            let canvas_like: Vec<RgbFrame> = w
                .frames
                .iter()
                .map(|f| RgbFrame {
                    width: g.canvas_w,
                    height: g.canvas_h,
                    data: Vec::new(),
                    ..*f
                })
                .collect();
            let canvas = tensor::tensor_to_frames(&pixels, &canvas_like).map_err(&e)?;
            let restored: Vec<RgbFrame> = canvas
                .iter()
                .map(|f| resizer.restore(f))
                .collect::<Result<_, _>>()
                .map_err(|m| e(m.to_string()))?;
            if let Some(c) = clip.as_mut() {
                clip_embeds.push(c.embed(&restored).map_err(&e)?);
            }
            per_edit.push(restored);
        }
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        if !send(
            &tx,
            WindowOutput {
                index: w.index,
                sources: w.frames,
                per_edit,
                clip: clip_embeds,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = vae.busy().0.as_secs_f64();
    Ok(stats)
}
