//! The diffusion stages: invert (the source prompt, once per window, through the inversion
//! cache) and edit (each prompt from that inversion, with its own strength and blending).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{
    err, send, Dropped, StageResult, StageStats, WindowEdited, WindowInverted, WindowLatents,
};
use crate::cache::{CacheCounts, InversionCache, Inverted};
use crate::diffusion::{
    self, pool, Blend, Conditioning, Inversion, Latent, Models, NoiseSource, Residuals, RunConfig,
    SeededNoise,
};
use crate::model::denoise::{Adapter, Unet};
use crate::pipeline::prompts::PromptFeed;
use crate::pipeline::setup::SamplerSetup;

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
    unet.busy() + adapter.as_ref().map(|a| a.0.busy().0).unwrap_or_default()
}

/// The inversion cache as the invert stage uses it: the cache, and the digest of everything
/// but the content that the inversion depends on (`pipeline::edit::inversion_settings`).
pub struct CacheUse {
    pub cache: InversionCache,
    pub settings: [u8; 32],
}

impl CacheUse {
    /// The key of a window with this content chain.
    pub fn key(&self, content: &[u8; 32]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.settings);
        h.update(content);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Seed of an edit-friendly inversion's draws (with the window's index mixed in).
const FRIENDLY_SEED: u64 = 0x6672_6965_6e64;

/// Windows whose output would come later than this after their input are dropped before
/// the expensive stages (live streams); counted in `dropped`.
pub struct DropLate<'a> {
    pub max_delay_s: f64,
    pub dropped: &'a Dropped,
}

/// `turns`: one window at a time through the networks (`prepare_encode`); a window dropped
/// here for lateness hands its turn back, since it will never reach the VAE decoder.
#[allow(clippy::too_many_arguments)]
pub fn invert(
    setup: SamplerSetup,
    mut unet: Unet,
    mut adapter: Option<Adapter>,
    mut prompts: Box<dyn PromptFeed + '_>,
    late: Option<DropLate>,
    cache: Option<CacheUse>,
    cancel: &AtomicBool,
    turns: Option<Sender<()>>,
    rx: Receiver<WindowLatents>,
    tx: Sender<WindowInverted>,
) -> StageResult {
    let e = err("invert");
    let mut stats = StageStats::default();
    let mut counts = CacheCounts::default();
    for w in rx.iter() {
        if let Some(l) = &late {
            let waited = w.meta.read_at.elapsed().as_secs_f64();
            if waited > l.max_delay_s {
                l.dropped.add(w.frames.len());
                tracing::warn!(
                    "window {} (t = {:.3} s) dropped: it waited {waited:.1} s for the inversion",
                    w.meta.index,
                    w.meta.t
                );
                if let Some(t) = &turns {
                    let _ = t.try_send(());
                }
                continue;
            }
        }
        let t0 = Instant::now();
        let conditions = prompts.for_window(w.meta.index, w.meta.t).map_err(&e)?;
        let key = cache
            .as_ref()
            .zip(w.meta.content.as_ref())
            .map(|(c, content)| c.key(content));
        let keep = setup.keep_trajectory;
        let hit = cache.as_ref().zip(key.as_ref()).and_then(|(c, key)| {
            c.cache.get(key, &mut counts).filter(|hit| {
                // A sound entry of the wrong shape would be a key collision: never use it.
                let steps = setup.schedule.timesteps().len();
                let friendly = setup.inversion == Inversion::Ddpm;
                let fits = hit.x_t.dim() == w.x0.dim()
                    && (!keep || hit.trajectory.len() == steps + 1)
                    && hit.residuals.len() == if friendly { steps } else { 0 };
                if !fits {
                    tracing::warn!(
                        "inversion cache: entry {key} does not fit this window; recomputing"
                    );
                }
                fits
            })
        });
        let value = if let Some(hit) = hit {
            stats.cached += 1;
            Inverted {
                trajectory: if keep { hit.trajectory } else { Vec::new() },
                ..hit
            }
        } else {
            let cond = Conditioning::new(conditions.source.clone());
            let run = RunConfig {
                schedule: &setup.schedule,
                context: setup.context,
                eta: 0.0,
                x0_source: Some(&w.x0),
                keep_trajectory: setup.keep_trajectory,
                layout: None,
            };
            let models = Models {
                unet: &mut unet,
                adapter: adapter
                    .as_mut()
                    .map(|a| a as &mut dyn diffusion::ContextAdapter),
            };
            let value = match setup.inversion {
                Inversion::Ddim => {
                    let out =
                        diffusion::invert(run, models, &w.x0, &cond, &mut progress_cb(cancel))
                            .map_err(|m| e(m.to_string()))?;
                    Inverted {
                        x_t: out.latent,
                        trajectory: out.trajectory,
                        residuals: Vec::new(),
                    }
                }
                Inversion::Ddpm => {
                    // The draws are a function of the window and the seed alone (both in the
                    // cache key), so a cached inversion is the one this run would compute.
                    let mut noise = SeededNoise::new(
                        FRIENDLY_SEED.wrapping_add(setup.inversion_seed)
                            ^ (w.meta.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    let out = diffusion::invert_friendly(
                        run,
                        models,
                        &w.x0,
                        &cond,
                        &mut noise,
                        &mut progress_cb(cancel),
                    )
                    .map_err(|m| e(m.to_string()))?;
                    Inverted {
                        x_t: out
                            .trajectory
                            .last()
                            .cloned()
                            .unwrap_or_else(|| w.x0.clone()),
                        trajectory: out.trajectory,
                        residuals: out.residuals,
                    }
                }
            };
            if let (Some(c), Some(key)) = (&cache, &key) {
                c.cache.put(key, &value, &mut counts);
            }
            stats.windows += 1;
            value
        };
        stats.busy_s += t0.elapsed().as_secs_f64();
        if !send(
            &tx,
            WindowInverted {
                latents: w,
                x_t: value.x_t,
                trajectory: value.trajectory,
                residuals: value.residuals,
                conditions,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = busy(&unet, &adapter).as_secs_f64();
    stats.cache = cache.is_some().then_some(counts);
    Ok(stats)
}

pub fn edit(
    setup: SamplerSetup,
    mut unet: Unet,
    mut adapter: Option<Adapter>,
    cancel: &AtomicBool,
    rx: Receiver<WindowInverted>,
    tx: Sender<WindowEdited>,
) -> StageResult {
    let e = err("edit");
    let mut stats = StageStats::default();
    for mut w in rx.iter() {
        let t0 = Instant::now();
        let edits = w.conditions.clone();
        let mut per_edit = Vec::with_capacity(edits.edits.len());
        // The last edit takes the inverted latent over, so it does not live on beside the
        // sampler's copy (a latent-sized buffer per window in flight).
        let mut x_t = Some(std::mem::replace(
            &mut w.x_t,
            Latent::zeros((0, 0, 0, 0, 0)),
        ));
        for (i, ed) in edits.edits.iter().enumerate() {
            // A seed per window and edit: reproducible, and windows do not share noise.
            let mut noise = SeededNoise::new(
                ed.seed ^ (w.latents.meta.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            // An edit of lower strength runs the inversion's last steps backwards from
            // the latent the inversion had reached there.
            let schedule = match ed.steps {
                Some(k) => &setup.schedule.least_noisy(k),
                None => &setup.schedule,
            };
            let partial_start = ed.steps.map(|k| {
                w.trajectory
                    .get(k)
                    .ok_or_else(|| e(format!("the inversion kept no latent after {k} steps")))
            });
            // After an edit-friendly inversion the run adds the inversion's residuals where
            // DDPM (eta = 1) would add fresh noise.
            let friendly = !w.residuals.is_empty();
            let run = RunConfig {
                schedule,
                context: setup.context,
                eta: if friendly { 1.0 } else { setup.eta },
                x0_source: Some(&w.latents.x0),
                keep_trajectory: false,
                layout: ed.controls.layout,
            };
            // A layout hold replays the held steps of the inversion under the same hold, so
            // the source prompt would still give the source back (`diffusion::layout`).
            let held;
            let all_residuals = match ed.controls.layout {
                Some(hold) if friendly => {
                    held = diffusion::held_residuals(
                        // The inversion's whole schedule, which the edit's may be the end of.
                        RunConfig {
                            schedule: &setup.schedule,
                            layout: None,
                            ..run
                        },
                        Models {
                            unet: &mut unet,
                            adapter: adapter
                                .as_mut()
                                .map(|a| a as &mut dyn diffusion::ContextAdapter),
                        },
                        &w.trajectory,
                        &w.residuals,
                        &Conditioning::new(edits.source.clone()),
                        hold,
                    )
                    .map_err(|m| e(m.to_string()))?;
                    &held
                }
                _ => &w.residuals,
            };
            // Less of the source's detail: the residuals' noise kept, part of the detail
            // the source prompt's estimates missed dropped (`diffusion::detail`).
            let detailed;
            let all_residuals = match ed.controls.source_detail {
                Some(d) if friendly && d < 1.0 => {
                    // The context the inversion's forward process was biased with.
                    let r = match adapter.as_mut() {
                        Some(a) if setup.context.active() => Some(
                            diffusion::ContextAdapter::context(
                                a,
                                &w.latents.x0,
                                &edits.source,
                                0.0,
                            )
                            .map_err(|m| e(m.to_string()))?,
                        ),
                        _ => None,
                    };
                    detailed = diffusion::with_source_detail(
                        &setup.schedule,
                        &setup.context,
                        &w.trajectory,
                        all_residuals,
                        r.as_ref(),
                        d,
                    )
                    .map_err(|m| e(m.to_string()))?;
                    &detailed
                }
                _ => all_residuals,
            };
            let mut residuals = Residuals::last(all_residuals, schedule.timesteps().len());
            let noise: &mut dyn NoiseSource = if friendly { &mut residuals } else { &mut noise };
            // The mask first: it needs the UNet alone, the sampler then borrows it with the adapter.
            let mask = if ed.blend > 0.0 {
                Some(
                    diffusion::edit_mask(
                        &mut unet,
                        schedule,
                        &w.latents.x0,
                        &edits.source,
                        &ed.cond.cond,
                        ed.blend,
                    )
                    .map_err(|m| e(m.to_string()))?,
                )
            } else {
                None
            };
            let models = Models {
                unet: &mut unet,
                adapter: adapter
                    .as_mut()
                    .map(|a| a as &mut dyn diffusion::ContextAdapter),
            };
            let (cond, mut steps) = (&ed.cond, progress_cb(cancel));
            let last = i + 1 == edits.edits.len();
            let out = match &mask {
                None if partial_start.is_some() => {
                    let start = partial_start.expect("matched")?;
                    diffusion::sample(run, models, start, cond, Some(noise), &mut steps)
                }
                None if last => {
                    let start = x_t.take().expect("taken by the last edit only");
                    diffusion::sample(run, models, start, cond, Some(noise), &mut steps)
                }
                None => {
                    let start = x_t.as_ref().expect("taken by the last edit only");
                    diffusion::sample(run, models, start, cond, Some(noise), &mut steps)
                }
                Some(mask) => diffusion::sample_blended(
                    run,
                    models,
                    match partial_start {
                        Some(start) => start?,
                        None => x_t.as_ref().expect("taken by the last edit only"),
                    },
                    cond,
                    Some(noise),
                    &Blend {
                        mask,
                        // An edit of lower strength follows the inversion as far as it starts.
                        inversion: &w.trajectory[..ed
                            .steps
                            .map_or(w.trajectory.len(), |k| (k + 1).min(w.trajectory.len()))],
                    },
                    &mut steps,
                ),
            }
            .map_err(|m| e(m.to_string()))?;
            per_edit.push(out.latent);
        }
        stats.busy_s += t0.elapsed().as_secs_f64();
        stats.windows += 1;
        let WindowInverted {
            latents:
                WindowLatents {
                    meta,
                    frames,
                    x0,
                    context,
                },
            conditions,
            trajectory,
            residuals,
            ..
        } = w;
        // The window's latents die here: their memory serves the next window's.
        pool::give(x0);
        trajectory.into_iter().for_each(pool::give);
        residuals.into_iter().for_each(pool::give);
        if !send(
            &tx,
            WindowEdited {
                meta,
                frames,
                context,
                per_edit,
                conditions,
            },
        ) {
            break;
        }
    }
    stats.onnx_s = busy(&unet, &adapter).as_secs_f64();
    Ok(stats)
}
