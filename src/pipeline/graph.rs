//! The engine every run shares (`ctxd edit`, `ctxd stream`, the daemon): the stages of
//! `stages` on their own threads, joined by bounded channels carrying one window at a time,
//! so memory stays proportional to the window whatever the input's length (a file is a
//! stream that ends). The calling thread muxes, through a callback; what it writes to, and
//! when a run's outputs are committed, is the caller's business (`edit`, `stream`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::bounded;

use super::clip::ClipScorer;
use super::prompts::PromptFeed;
use super::stages::{
    self, CacheUse, DecodeConfig, DropLate, FrameFeed, PrepareConfig, SamplerSetup, StageError,
    StageStats, WindowOutput,
};
use crate::media::scale::Resizer;
use crate::media::MediaError;
use crate::model::denoise::{Adapter, Unet};
use crate::model::{Bundle, Kind, ModelError, Network, RuntimeOptions};

pub use super::edit::run;
pub use super::setup::sampler_setup;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{0}")]
    Config(String),
}

impl PipelineError {
    /// Where a failed job failed (`input`, `output`, `setup`, `media` or a stage's name) and
    /// whether running it again could help: a bad input or setting fails at once, a full disk
    /// or a crashed stage is worth another attempt. The daemon and the cluster workers both
    /// decide retries by this.
    pub fn classify(&self) -> (String, bool) {
        use stages::Fault;
        match self {
            PipelineError::Media(m) if m.is_input_error() => ("input".into(), false),
            PipelineError::Media(MediaError::Unwritable { .. }) => ("output".into(), true),
            // Decoding that fails partway: the file is bad; trying again cannot help.
            PipelineError::Stage(s) if s.fault == Fault::Input => ("input".into(), false),
            PipelineError::Stage(s) if s.fault == Fault::Output => ("output".into(), true),
            PipelineError::Stage(s) => (s.stage.to_string(), true),
            PipelineError::Model(_) | PipelineError::Config(_) => ("setup".into(), false),
            PipelineError::Media(_) => ("media".into(), true),
        }
    }
}

/// The processing canvas for a source of `video`'s size: `short_side` (None: native), padded
/// to `multiple` and to the bundle's downsampling.
pub fn geometry(
    video: &crate::media::decode::VideoLayout,
    short_side: Option<u32>,
    multiple: u32,
    bundle: &Bundle,
) -> crate::media::scale::Letterbox {
    crate::media::scale::Letterbox::fit(
        video.width,
        video.height,
        short_side,
        multiple.max(bundle.manifest().latent.downsampling as u32),
    )
}

/// Seconds per tick of a stream's time base.
pub fn seconds_per_tick(tb: ffmpeg_next::Rational) -> f64 {
    tb.numerator() as f64 / tb.denominator().max(1) as f64
}

/// The sessions of every stage, built before any thread starts (so a bad bundle fails first).
pub struct StageModels {
    pub vae_enc: Network,
    pub vae_dec: Network,
    pub unet_inv: Unet,
    pub unet_edit: Unet,
    pub adapter_inv: Option<Adapter>,
    pub adapter_edit: Option<Adapter>,
    pub clip: Option<ClipScorer>,
    /// Execution provider per network family, for reports.
    pub providers: BTreeMap<String, String>,
}

impl StageModels {
    /// Stages run at the same time, so they share the cores: unless the user fixed a thread
    /// count, each stage's sessions get half of them (the two UNet stages dominate), where one
    /// stage at a time (`sequential`: `--pipelining off`, or a clip of one window, whose
    /// stages cannot overlap) gets them all. When the inversions are
    /// expected from the cache (`inversion_cached`), the edit stage is the only busy one and
    /// gets them all too.
    ///
    /// # Errors
    /// A network that does not load.
    pub fn load(
        bundle: &Bundle,
        user: &RuntimeOptions,
        setup: &SamplerSetup,
        sequential: bool,
        inversion_cached: bool,
    ) -> Result<StageModels, ModelError> {
        let opts = &stage_runtime(user, sequential);
        let edit_opts = &stage_runtime(user, sequential || inversion_cached);
        let active = setup.context.active();
        // Every session at once: building one is mostly single-threaded work inside ONNX
        // Runtime (reading, resolving and pre-packing the graph), so a cold start takes about
        // as long as the largest network instead of the sum of all of them.
        let adapter = |o: &RuntimeOptions| -> Result<Option<Adapter>, ModelError> {
            match active {
                true => Ok(Some(Adapter(bundle.load(Kind::ContextAdapter, o)?))),
                false => Ok(None),
            }
        };
        let adapter = &adapter;
        // A UNet past SHARED_UNET_BYTES is loaded once, with every core, and the invert and
        // edit stages take turns on it: two sessions would hold its weights twice (SD 1.5:
        // 3.4 GB each), for an overlap that buys little when the UNet's calls already fill
        // the cores.
        let unet_bytes = weights_bytes(bundle, Kind::Unet);
        let shared = unet_bytes >= shared_unet_bytes(user);
        if shared {
            tracing::info!(
                "the invert and edit stages share one UNet session ({:.2} GiB of weights)",
                unet_bytes as f64 / (1u64 << 30) as f64
            );
        }
        let shared_opts = &stage_runtime(user, true);
        let (vae_enc, vae_dec, unet_inv, unet_edit, adapter_inv, adapter_edit, clip) =
            std::thread::scope(|s| {
                let vae_enc = s.spawn(|| bundle.load(Kind::VaeEncoder, opts));
                let vae_dec = s.spawn(|| bundle.load(Kind::VaeDecoder, opts));
                let unet_inv = s.spawn(|| match shared {
                    true => bundle.load(Kind::Unet, shared_opts),
                    false => bundle.load(Kind::Unet, opts),
                });
                let unet_edit = s.spawn(|| match shared {
                    true => Ok(None),
                    false => bundle.load(Kind::Unet, edit_opts).map(Some),
                });
                let adapter_inv = s.spawn(|| adapter(opts));
                let adapter_edit = s.spawn(|| adapter(edit_opts));
                let clip = s.spawn(|| ClipScorer::load(bundle, opts));
                let unet_inv = Unet::new(joined(unet_inv)?);
                let unet_edit = match joined(unet_edit)? {
                    Some(net) => Unet::new(net),
                    None => unet_inv.share(),
                };
                Ok::<_, ModelError>((
                    joined(vae_enc)?,
                    joined(vae_dec)?,
                    unet_inv,
                    unet_edit,
                    joined(adapter_inv)?,
                    joined(adapter_edit)?,
                    joined(clip)?,
                ))
            })?;
        let mut providers = BTreeMap::new();
        providers.insert("unet".to_string(), unet_inv.provider().to_string());
        providers.insert("vae".to_string(), vae_enc.provider().to_string());
        Ok(StageModels {
            vae_enc,
            vae_dec,
            unet_inv,
            unet_edit,
            adapter_inv,
            adapter_edit,
            clip,
            providers,
        })
    }
}

/// From this size of weights on (the ONNX file and its external data), the invert and edit
/// stages share one UNet session (`StageModels::load`): the options' `share_unet_from`, else
/// `$CTXD_SHARED_UNET_BYTES` (0 shares every UNet, for hosts short of memory), else 1 GiB.
fn shared_unet_bytes(user: &RuntimeOptions) -> u64 {
    user.share_unet_from.unwrap_or_else(|| {
        std::env::var("CTXD_SHARED_UNET_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1 << 30)
    })
}

/// Bytes of a network's weights on disk: its file plus its external data.
fn weights_bytes(bundle: &Bundle, kind: Kind) -> u64 {
    let Some(entry) = bundle.entry(kind) else {
        return 0;
    };
    let size = |name: &str| {
        std::fs::metadata(bundle.dir().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    size(&entry.file) + entry.external_data.as_deref().map(size).unwrap_or(0)
}

/// A scoped thread's result; its panic, if it had one, goes on in this thread.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn stage_runtime(user: &RuntimeOptions, sequential: bool) -> RuntimeOptions {
    let mut o = user.clone();
    if o.intra_threads.is_none() && !sequential {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        o.intra_threads = Some((cores / 2).max(1));
    }
    o
}

/// One run of the stage graph.
pub struct Graph<'a> {
    pub frames: FrameFeed<'a>,
    pub decode: DecodeConfig<'a>,
    pub prepare: PrepareConfig,
    pub setup: SamplerSetup,
    pub models: StageModels,
    pub prompts: Box<dyn PromptFeed + 'a>,
    pub late: Option<DropLate<'a>>,
    /// The inversion cache (finite inputs only; `decode.hash_content` must be on).
    pub cache: Option<CacheUse>,
    pub cancel: &'a AtomicBool,
    /// One window at a time through the networks: each goes from the VAE encoder to the VAE
    /// decoder before the next starts, while decoding and writing overlap them (the
    /// sequential baseline, `--pipelining off`).
    pub sequential: bool,
}

/// Runs `g`, handing each finished window to `mux` on this thread, in order.
///
/// # Errors
/// The first failure, by stage order, naming the stage and the cause (the mux's after the
/// others: a failed stage makes the mux see its input end early). A failing mux cancels the
/// stages upstream.
pub fn run_graph(
    g: Graph,
    mux: &mut dyn FnMut(WindowOutput) -> Result<(), StageError>,
) -> Result<BTreeMap<String, StageStats>, PipelineError> {
    let Graph {
        frames,
        decode,
        prepare,
        setup,
        models,
        prompts,
        late,
        cache,
        cancel,
        sequential,
    } = g;
    let StageModels {
        vae_enc,
        vae_dec,
        unet_inv,
        unet_edit,
        adapter_inv,
        adapter_edit,
        clip,
        ..
    } = models;
    // One window at a time through the networks: one turn in circulation; the encoder takes
    // it before each window and the VAE decoder hands it back once the window is queued for
    // the writer. Decoding the input and writing the output still overlap with the networks.
    // A window the invert stage drops for lateness hands its turn back there.
    let (turn_tx, turn_rx) = bounded::<()>(1);
    let (downstream_tx, downstream_rx) = bounded::<()>(0);
    let (turns_in, turns_out) = if sequential {
        turn_tx.send(()).expect("fresh channel has room");
        let gate = stages::TurnGate {
            turns: turn_rx,
            downstream: downstream_rx,
        };
        (Some(gate), Some(turn_tx))
    } else {
        (None, None)
    };
    let turns_dropped = turns_out.clone();
    let scale = prepare.scale_factor;
    let resizer = Resizer::new(prepare.resizer.geometry());
    let (tx_frames, rx_frames) = bounded(1);
    let (tx_lat, rx_lat) = bounded(1);
    let (tx_inv, rx_inv) = bounded(1);
    let (tx_edit, rx_edit) = bounded(1);
    let (tx_out, rx_out) = bounded(1);

    let (results, mux_result) = std::thread::scope(|scope| {
        let setup_edit = setup.clone();
        let handles = vec![
            (
                "decode",
                spawn(scope, "decode", move || {
                    stages::decode(decode, frames, tx_frames)
                }),
            ),
            (
                "encode",
                spawn(scope, "encode", move || {
                    stages::prepare_encode(prepare, vae_enc, turns_in, rx_frames, tx_lat)
                }),
            ),
            (
                "invert",
                spawn(scope, "invert", move || {
                    stages::invert(
                        setup,
                        unet_inv,
                        adapter_inv,
                        prompts,
                        late,
                        cache,
                        cancel,
                        turns_dropped,
                        rx_lat,
                        tx_inv,
                    )
                }),
            ),
            (
                "edit",
                spawn(scope, "edit", move || {
                    stages::edit(setup_edit, unet_edit, adapter_edit, cancel, rx_inv, tx_edit)
                }),
            ),
            (
                "vae-decode",
                spawn(scope, "vae-decode", move || {
                    // Held until this stage ends: then the encoder stops waiting for turns.
                    let _downstream = downstream_tx;
                    stages::decode_finish(resizer, scale, vae_dec, clip, turns_out, rx_edit, tx_out)
                }),
            ),
        ];

        let mux_result = (|| -> Result<StageStats, StageError> {
            let mut stats = StageStats::default();
            for w in rx_out.iter() {
                let t0 = Instant::now();
                mux(w)?;
                stats.windows += 1;
                stats.busy_s += t0.elapsed().as_secs_f64();
            }
            Ok(stats)
        })();
        if mux_result.is_err() {
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
                        Err(StageError::new(
                            "pipeline",
                            format!("the {name} thread panicked"),
                        ))
                    }),
                )
            })
            .collect();
        (results, mux_result)
    });

    // A failed mux explains the others' "cancelled"; otherwise the first failing stage, in
    // pipeline order, is the cause and later ones are consequences.
    let mux_stats = mux_result?;
    let mut stage_stats = BTreeMap::new();
    for (name, r) in results {
        stage_stats.insert(name.to_string(), r?);
    }
    stage_stats.insert("mux".to_string(), mux_stats);
    if cancel.load(Ordering::Relaxed) {
        return Err(StageError::new("pipeline", "cancelled".into()).into());
    }
    Ok(stage_stats)
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
