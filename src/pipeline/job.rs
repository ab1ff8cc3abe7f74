//! What one `ctxd edit` run does, fully resolved (from a `spec::JobSpec` plus the command
//! line): the engine in `graph` reads only this.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;

use super::spec::JobSpec;
use crate::cache::InversionCache;
use crate::diffusion::schedule::steps_at_strength;
use crate::diffusion::{ContextMode, Inversion, LayoutHold};
use crate::media::{EncodeSettings, InputSpec};
use crate::model::RuntimeOptions;

#[derive(Debug, Clone, Serialize)]
pub struct EditTarget {
    pub name: String,
    pub prompt: String,
    pub negative: Option<String>,
    pub guidance: f32,
    pub seed: u64,
    pub output: PathBuf,
    /// Whether the job's local blending applies to this edit (false for a reconstruction
    /// check, whose mask would be empty and its output the source itself).
    pub blend: bool,
    /// This edit's share of the schedule; None: the job's `strength`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// This edit's local blending threshold (0 = off); None: the job's `blend`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend_threshold: Option<f32>,
    /// This edit's layout hold (`diffusion::layout`); None: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutHold>,
    /// The share of the source's detail this edit adds back after an edit-friendly
    /// inversion (`diffusion::detail`); None: all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_detail: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct EditJob {
    pub input: InputSpec,
    pub bundle_dir: PathBuf,
    pub runtime: RuntimeOptions,
    /// Describes the input video; the inversion runs under it.
    pub source_prompt: String,
    /// One output each; all share one decode, one VAE encode and one inversion.
    pub edits: Vec<EditTarget>,
    pub steps: usize,
    pub eta: f64,
    /// DDIM or edit-friendly DDPM inversion.
    pub inversion: Inversion,
    /// Share of the schedule an edit runs unless it sets its own (`Schedule::with_strength`);
    /// 1 = every step.
    pub strength: f64,
    pub context: ContextMode,
    /// New frames per temporal window.
    pub window: usize,
    /// Frames of the previous window repeated as context at the start of the next.
    pub overlap: usize,
    /// The video's first frame joins every window as a shared anchor (sparse-causal attention
    /// makes every frame attend to it, tying the windows together).
    pub anchor: bool,
    /// Processing resolution: short side (None: native), padded to `multiple`.
    pub short_side: Option<u32>,
    pub multiple: u32,
    /// Local blending threshold (`diffusion::blend`); 0 = off.
    pub blend: f32,
    pub encode: EncodeSettings,
    /// Compare outputs with the input (PSNR) in the report: the `reconstruct` preset.
    pub measure_reconstruction: bool,
    /// The resolved spec, for the report (values and which layer set them).
    pub spec_json: serde_json::Value,
    pub cancel: Arc<AtomicBool>,
    /// Where inverted windows are looked up and kept (None: always invert).
    pub cache: Option<InversionCache>,
}

/// Where a run is: what `ctxd watch` shows as a running job's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Checking the bundle, encoding the prompts, loading the networks.
    Loading,
    /// Windows going through decode, inversion, editing and encode.
    Editing,
    /// Every window written: finishing the files and putting them in place.
    Writing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Editing => "editing",
            Phase::Writing => "writing",
        }
    }
}

/// Progress, reported when loading starts, after each window is written, and when the
/// outputs are being finished.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    pub windows_done: usize,
    pub frames_done: u64,
    /// From the container or a packet scan, when known.
    pub frames_total: Option<u64>,
}

/// The spec's `deflicker`, when set, on top of the caller's encoder settings.
pub(crate) fn with_deflicker(mut encode: EncodeSettings, deflicker: f32) -> EncodeSettings {
    if deflicker > 0.0 {
        encode.deflicker = Some(deflicker);
    }
    encode
}

impl EditJob {
    /// The share of the schedule the inversion runs: as far as the strongest edit needs.
    pub fn inversion_strength(&self) -> f64 {
        self.edits
            .iter()
            .map(|e| self.strength_of(e))
            .fold(f64::MIN_POSITIVE, f64::max)
    }

    /// The share of the schedule `edit` runs: its own, else the job's.
    pub fn strength_of(&self, edit: &EditTarget) -> f64 {
        edit.strength.unwrap_or(self.strength)
    }

    /// The local blending threshold `edit` runs with (0 = off).
    pub fn blend_of(&self, edit: &EditTarget) -> f32 {
        if edit.blend {
            edit.blend_threshold.unwrap_or(self.blend)
        } else {
            0.0
        }
    }

    /// The seed of an edit-friendly inversion's draws: the first edit's, as the job's `steps`
    /// and `context` are (a video's edits share one inversion).
    pub fn inversion_seed(&self) -> u64 {
        self.edits.first().map_or(0, |e| e.seed)
    }

    /// Whether the inversion keeps every step's latent: an edit blends with it, or starts
    /// part way along it.
    pub fn keeps_trajectory(&self) -> bool {
        self.inversion == Inversion::Ddpm
            || self.edits.iter().any(|e| self.blend_of(e) > 0.0)
            || self.partial_steps().iter().any(Option::is_some)
    }

    /// How many of the inversion's steps each edit runs, where fewer than all of them
    /// (None: the whole inversion, from its end).
    pub fn partial_steps(&self) -> Vec<Option<usize>> {
        let all = steps_at_strength(self.steps, self.inversion_strength());
        self.edits
            .iter()
            .map(|e| {
                let own = steps_at_strength(self.steps, self.strength_of(e));
                (own < all).then_some(own)
            })
            .collect()
    }

    /// The job a resolved spec describes: one output per edit (`outputs[i]` for
    /// `spec.edits[i]`), steps and context from the first edit (all edits share one inversion;
    /// callers check they agree).
    #[allow(clippy::too_many_arguments)]
    pub fn from_spec(
        spec: &JobSpec,
        input: InputSpec,
        outputs: Vec<PathBuf>,
        bundle_dir: PathBuf,
        runtime: RuntimeOptions,
        encode: EncodeSettings,
        cancel: Arc<AtomicBool>,
    ) -> EditJob {
        let first = &spec.edits[0];
        EditJob {
            input,
            bundle_dir,
            runtime,
            source_prompt: spec.source.clone(),
            edits: spec
                .edits
                .iter()
                .zip(outputs)
                .map(|(e, output)| EditTarget {
                    name: e.name.clone(),
                    prompt: e.prompt.clone(),
                    negative: e.negative.clone(),
                    guidance: e.guidance,
                    seed: e.seed,
                    output,
                    blend: true,
                    strength: e.strength,
                    blend_threshold: e.blend,
                    layout: e.layout,
                    source_detail: e.source_detail,
                })
                .collect(),
            steps: first.steps,
            eta: spec.eta,
            inversion: spec.inversion,
            strength: spec.strength,
            context: first.context,
            window: spec.window,
            overlap: spec.overlap,
            anchor: spec.anchor,
            short_side: spec.short_side,
            multiple: spec.multiple,
            blend: spec.blend,
            encode: with_deflicker(encode, spec.deflicker),
            measure_reconstruction: spec.reconstruct,
            spec_json: serde_json::to_value(spec).unwrap_or_default(),
            cancel,
            cache: None,
        }
    }
}
