//! The stages of DESIGN.md's data flow, each a function run on its own thread, taking a
//! receiver and a sender; a stage ends when its input ends (the sender upstream was dropped)
//! and drops its own sender so the next one ends too. Each owns the sessions it needs.
//!
//! decode → prepare+encode (scale, normalise, VAE encode) → invert (UNet, adapter) → edit
//! (UNet, adapter, per prompt) → vae-decode+finish (VAE decode, scale back) → mux (caller)
//!
//! invert and edit live in `diffuse`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ndarray::s;

pub use super::prompts::EditCondition;
use super::prompts::WindowConditions;
pub use super::setup::SamplerSetup;
use super::tensor;
use super::windows::WindowPlanner;
use crate::cache::CacheCounts;
use crate::diffusion::{pool, Latent};
use crate::media::scale::Resizer;
use crate::media::{MediaError, RgbFrame};
use crate::model::{Input, Network};

mod diffuse;
pub use diffuse::{edit, invert, CacheUse, DropLate};

/// A stage's failure: which stage and why.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {cause}")]
pub struct StageError {
    pub stage: &'static str,
    pub cause: String,
    /// Whose fault, so a daemon knows whether trying again can help.
    pub fault: Fault,
}

/// Whose fault a stage's failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The input is bad (corrupt or truncated partway): the same file fails again.
    Input,
    /// The output could not be written (a full disk): may pass later.
    Output,
    /// Anything else (a network's failure, a cancellation).
    Other,
}

impl StageError {
    pub fn new(stage: &'static str, cause: String) -> StageError {
        StageError {
            stage,
            cause,
            fault: Fault::Other,
        }
    }

    /// A media error met in `stage`, keeping whether it is the input's fault.
    pub fn media(stage: &'static str, m: &MediaError) -> StageError {
        let fault = if m.is_input_error() {
            Fault::Input
        } else if matches!(m, MediaError::Unwritable { .. }) {
            Fault::Output
        } else {
            Fault::Other
        };
        StageError {
            stage,
            cause: m.to_string(),
            fault,
        }
    }
}

pub type StageResult = Result<StageStats, StageError>;

/// Time a stage spent working (not waiting on channels).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageStats {
    pub busy_s: f64,
    pub onnx_s: f64,
    /// Windows this stage worked on.
    pub windows: usize,
    /// Windows served from the inversion cache instead (the invert stage; not in `windows`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cached: usize,
    /// What the invert stage did with the inversion cache, when one is in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheCounts>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn err(stage: &'static str) -> impl Fn(String) -> StageError {
    move |cause| StageError::new(stage, cause)
}

/// Where a window came from: its place in the stream, when its first frame was read (the
/// start of its delay) and that frame's time.
#[derive(Debug, Clone, Copy)]
pub struct WindowMeta {
    pub index: usize,
    pub read_at: Instant,
    pub t: f64,
    /// SHA-256 chained over every decoded frame up to the end of this window (when the
    /// inversion cache is on): with the anchor and overlap frames, what the window's
    /// inversion sees comes from these frames and nothing else.
    pub content: Option<[u8; 32]>,
}

/// New frames of one window, in presentation order.
pub struct WindowFrames {
    pub meta: WindowMeta,
    pub frames: Vec<RgbFrame>,
}

/// A window's clean latent, with `context` leading frames (anchor, overlap) that are there for
/// consistency only and produce no output.
pub struct WindowLatents {
    pub meta: WindowMeta,
    pub frames: Vec<RgbFrame>,
    pub x0: Latent,
    pub context: usize,
}

pub struct WindowInverted {
    pub latents: WindowLatents,
    pub x_t: Latent,
    /// The inversion trajectory (clean latent first), kept for local blending, edits of
    /// lower strength and edit-friendly inversions.
    pub trajectory: Vec<Latent>,
    /// An edit-friendly inversion's residuals, one per sampling step (empty after DDIM).
    pub residuals: Vec<Latent>,
    /// The prompts this window is edited with (resolved when its inversion started).
    pub conditions: Arc<WindowConditions>,
}

pub struct WindowEdited {
    pub meta: WindowMeta,
    pub frames: Vec<RgbFrame>,
    pub context: usize,
    pub per_edit: Vec<Latent>,
    pub conditions: Arc<WindowConditions>,
}

/// Output frames of one window, per edit, at the source's size and timestamps.
pub struct WindowOutput {
    pub meta: WindowMeta,
    pub sources: Vec<RgbFrame>,
    pub per_edit: Vec<Vec<RgbFrame>>,
    /// CLIP image embeddings of the output frames, per edit (empty without a CLIP pair).
    pub clip: Vec<Vec<Vec<f32>>>,
    pub conditions: Arc<WindowConditions>,
}

/// Sends, or reports that downstream is gone (it failed, and says why itself).
fn send<T>(tx: &Sender<T>, v: T) -> bool {
    tx.send(v).is_ok()
}

/// The frames a run reads: a file's decoder, or a live source that reconnects.
pub type FrameFeed<'a> = Box<dyn Iterator<Item = Result<RgbFrame, MediaError>> + Send + 'a>;

/// What to do when the pipeline is slower than the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LagPolicy {
    /// Stop reading until the pipeline takes the window (a file, a pipe that can wait).
    Wait,
    /// Drop a window that finds the pipeline busy while the output already lags the input
    /// by more than this many seconds of wall clock (a live source that cannot wait).
    Drop { max_delay_s: f64 },
}

/// Windows a live stream dropped for lateness (the lag policy), and their new frames.
#[derive(Debug, Default)]
pub struct Dropped {
    pub windows: AtomicU64,
    pub frames: AtomicU64,
}

impl Dropped {
    fn add(&self, frames: usize) {
        self.windows.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(frames as u64, Ordering::Relaxed);
    }
}

/// How the decode stage runs.
pub struct DecodeConfig<'a> {
    /// New frames per window.
    pub window: usize,
    /// New frames in the first window (`Anchor::first_window`): the window plus the context
    /// frames it does not have.
    pub first_window: usize,
    pub cancel: &'a AtomicBool,
    /// Set to end the input gracefully: the windows read so far are finished and written.
    pub stop: Option<&'a AtomicBool>,
    pub lag: LagPolicy,
    /// Windows dropped by the lag policy.
    pub dropped: &'a Dropped,
    /// Seconds per timestamp tick of the frames, for `WindowMeta::t`.
    pub seconds_per_tick: f64,
    /// Chain a content hash through the frames (`WindowMeta::content`).
    pub hash_content: bool,
}

pub fn decode(cfg: DecodeConfig, frames: FrameFeed, tx: Sender<WindowFrames>) -> StageResult {
    let e = err("decode");
    let mut stats = StageStats::default();
    let mut working = Instant::now();
    let window = cfg.window.max(1);
    let mut wanted = cfg.first_window.max(1);
    let mut batch: Vec<RgbFrame> = Vec::with_capacity(wanted);
    let mut index = 0;
    let mut read_at = Instant::now();
    // Wall clock against media time, from the first frame: how far the run lags the input.
    let mut clock: Option<(Instant, f64)> = None;
    let stopping = || cfg.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let mut chain = [0u8; 32];
    let hash_content = cfg.hash_content;
    let mut emit = |batch: Vec<RgbFrame>, read_at: Instant, stats: &mut StageStats| -> bool {
        let t = batch[0].pts as f64 * cfg.seconds_per_tick;
        let (start, t0) = *clock.get_or_insert((read_at, t));
        let content = hash_content.then(|| {
            chain = chain_frames(&chain, &batch);
            chain
        });
        let w = WindowFrames {
            meta: WindowMeta {
                index,
                read_at,
                t,
                content,
            },
            frames: batch,
        };
        index += 1;
        stats.windows += 1;
        match cfg.lag {
            LagPolicy::Wait => send(&tx, w),
            LagPolicy::Drop { max_delay_s } => match tx.try_send(w) {
                Ok(()) => true,
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
                Err(crossbeam_channel::TrySendError::Full(w)) => {
                    let lag = start.elapsed().as_secs_f64() - (t - t0);
                    if lag > max_delay_s {
                        cfg.dropped.add(w.frames.len());
                        tracing::warn!(
                            "window {} (t = {t:.3} s) dropped: the output lags the input by {lag:.1} s",
                            w.meta.index
                        );
                        true
                    } else {
                        send(&tx, w)
                    }
                }
            },
        }
    };
    for frame in frames {
        if cfg.cancel.load(Ordering::Relaxed) {
            return Err(e("cancelled".into()));
        }
        if batch.is_empty() {
            read_at = Instant::now();
        }
        // A frame that cannot be decoded partway is the input's fault, not a passing one.
        batch.push(frame.map_err(|m| StageError::media("decode", &m))?);
        if batch.len() == wanted {
            // Busy = decoding, not waiting for the next stage to take the window.
            stats.busy_s += working.elapsed().as_secs_f64();
            if !emit(std::mem::take(&mut batch), read_at, &mut stats) {
                return Ok(stats);
            }
            wanted = window;
            working = Instant::now();
        }
        if stopping() && batch.is_empty() {
            break;
        }
    }
    if !batch.is_empty() {
        emit(batch, read_at, &mut stats);
    }
    stats.busy_s += working.elapsed().as_secs_f64();
    Ok(stats)
}

/// The next link of the content chain: the previous one, then each frame's size and pixels
/// (timestamps do not change what is inverted).
pub(crate) fn chain_frames(prev: &[u8; 32], frames: &[RgbFrame]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev);
    for f in frames {
        h.update(f.width.to_le_bytes());
        h.update(f.height.to_le_bytes());
        h.update(&f.data);
    }
    h.finalize().into()
}

pub struct PrepareConfig {
    pub resizer: Resizer,
    pub scale_factor: f32,
    pub planner: WindowPlanner,
}

/// One window at a time through the networks (`--pipelining off`): the encoder waits for a
/// turn before each window. Turns come back from the VAE decoder (a window done) or the
/// invert stage (a window dropped for lateness).
pub struct TurnGate {
    pub turns: Receiver<()>,
    /// Never sent on; its sender lives as long as the VAE decoder's thread. When that ends
    /// (the windows ran out, a stage failed, a cancel) no turn will come back, although the
    /// invert stage, waiting for the encoder's next window, still holds a sender of `turns`.
    pub downstream: Receiver<()>,
}

impl TurnGate {
    /// Waits for a turn; false once the networks downstream have stopped.
    fn wait(&self) -> bool {
        crossbeam_channel::select! {
            recv(self.turns) -> turn => turn.is_ok(),
            recv(self.downstream) -> _ => false,
        }
    }
}

pub fn prepare_encode(
    mut cfg: PrepareConfig,
    mut vae: Network,
    turns: Option<TurnGate>,
    rx: Receiver<WindowFrames>,
    tx: Sender<WindowLatents>,
) -> StageResult {
    let e = err("encode");
    let mut stats = StageStats::default();
    for w in rx.iter() {
        if turns.as_ref().is_some_and(|t| !t.wait()) {
            break;
        }
        let t0 = Instant::now();
        let canvas = cfg
            .resizer
            .to_canvas_all(&w.frames)
            .map_err(|m| e(m.to_string()))?;
        let pixels = tensor::frames_to_tensor(&canvas);
        let scale = cfg.scale_factor;
        let latent = vae
            .run_one_with(
                vec![("sample", Input::F32View(pixels.view().into_dyn()))],
                "latent_mean",
                |mean| tensor::to_video_latent(mean, scale),
            )
            .map_err(|m| e(m.to_string()))?
            .map_err(&e)?;
        pool::give(pixels);
        let planned = cfg.planner.plan(latent).map_err(&e)?;
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        if !send(
            &tx,
            WindowLatents {
                meta: w.meta,
                frames: w.frames,
                x0: planned.x0,
                context: planned.context,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = vae.busy().0.as_secs_f64();
    Ok(stats)
}

pub fn decode_finish(
    mut resizer: Resizer,
    scale_factor: f32,
    mut vae: Network,
    mut clip: Option<super::clip::ClipScorer>,
    turns: Option<Sender<()>>,
    rx: Receiver<WindowEdited>,
    tx: Sender<WindowOutput>,
) -> StageResult {
    let e = err("vae-decode");
    let mut stats = StageStats::default();
    for mut w in rx.iter() {
        let t0 = Instant::now();
        let mut per_edit = Vec::with_capacity(w.per_edit.len());
        let mut clip_embeds = Vec::new();
        for lat in &w.per_edit {
            // One call per window and edit, the window's own frames in display order along the
            // batch axis: a temporal decoder (models/demo's, like Stable Video Diffusion's) mixes
            // neighbouring frames. The context frames are left out: the anchor is not adjacent.
            let frames_lat =
                tensor::to_frame_latents(lat.slice(s![.., .., w.context.., .., ..])) / scale_factor;
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
            // Read in place from the decoder's output buffer.
            let canvas = vae
                .run_one_with(
                    vec![(
                        "latent_sample",
                        Input::F32View(frames_lat.view().into_dyn()),
                    )],
                    "sample",
                    |pixels| tensor::tensor_to_frames(pixels, &canvas_like),
                )
                .map_err(|m| e(m.to_string()))?
                .map_err(&e)?;
            pool::give(frames_lat);
            let restored = resizer.restore_all(&canvas).map_err(|m| e(m.to_string()))?;
            if let Some(c) = clip.as_mut() {
                // CLIP sees the picture at the processing size, padding cropped off: the
                // restored frame is that picture scaled up, no more, and shrinking it again
                // cost a millisecond a frame at 640x360.
                let pictures: Vec<RgbFrame> = canvas
                    .iter()
                    .map(|f| crate::media::scale::crop(f, g.content_w, g.content_h))
                    .collect();
                clip_embeds.push(c.embed(&pictures).map_err(&e)?);
            }
            per_edit.push(restored);
        }
        // Decoded: the latents' memory serves the next window's.
        std::mem::take(&mut w.per_edit)
            .into_iter()
            .for_each(pool::give);
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        let sent = send(
            &tx,
            WindowOutput {
                meta: w.meta,
                sources: w.frames,
                per_edit,
                clip: clip_embeds,
                conditions: w.conditions,
            },
        );
        if let Some(t) = &turns {
            // Once the window is queued for the writer, so a window waiting there holds the
            // next one back. The encoder may have finished; then nobody needs the turn.
            let _ = t.try_send(());
        }
        if !sent {
            break;
        }
    }
    // CLIP's image encoder runs in this stage too.
    stats.onnx_s =
        (vae.busy().0 + clip.as_ref().map(|c| c.busy()).unwrap_or_default()).as_secs_f64();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_cuts_a_longer_first_window_then_windows_of_the_set_size() {
        let (cancel, dropped) = (AtomicBool::new(false), Dropped::default());
        let cfg = DecodeConfig {
            window: 3,
            first_window: 4,
            cancel: &cancel,
            stop: None,
            lag: LagPolicy::Wait,
            dropped: &dropped,
            seconds_per_tick: 1.0,
            hash_content: false,
        };
        let frames: FrameFeed = Box::new((0..11).map(|i| Ok(RgbFrame::new(i, i as i64, 1, 2, 2))));
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = decode(cfg, frames, tx).unwrap();
        let sizes: Vec<usize> = rx.iter().map(|w| w.frames.len()).collect();
        assert_eq!(sizes, [4, 3, 3, 1]);
        assert_eq!(stats.windows, 4);
    }
}
