//! Prompt resolution per window: the text states the inversion and each edit run under.
//!
//! `ctxd edit` encodes its prompts once (`FixedPrompts`). `ctxd stream` asks before every
//! window (`LivePrompts`): the prompt file is re-read when it changes (or a new prompt arrives
//! through the daemon's API); a valid change takes effect at the next window, after one
//! window of transition whose text states lie halfway between the old and the new prompt (so
//! no window is edited with neither); an invalid one is refused with one line and the last
//! good prompt stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ndarray::Array3;
use serde::Serialize;

use crate::diffusion::{Conditioning, LayoutHold};
use crate::model::TextEncoder;

/// One edit's conditioning.
pub struct EditCondition {
    pub cond: Conditioning,
    pub seed: u64,
    /// Local blending threshold for this edit (`diffusion::blend`); 0 = off.
    pub blend: f32,
    /// Runs only this many of the inversion's steps, starting from the inversion's latent
    /// after them (an edit of lower strength); None: all of them, from its end.
    pub steps: Option<usize>,
    /// Its sampler controls (layout hold, source detail).
    pub controls: EditControls,
}

/// An edit's sampler controls beyond its prompt, guidance, strength and blending.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EditControls {
    /// Its layout hold (`diffusion::layout`), if any.
    pub layout: Option<LayoutHold>,
    /// The share of the source's detail it adds back after an edit-friendly inversion
    /// (`diffusion::detail`); None: all of it.
    pub source_detail: Option<f64>,
}

/// What a window is inverted and edited with.
pub struct WindowConditions {
    /// Counts prompt changes: 0 for the prompt the run started with.
    pub version: u64,
    pub source: Array3<f32>,
    pub edits: Vec<EditCondition>,
    /// The target prompt(s) in force, for reports and logs.
    pub prompts: Vec<String>,
}

/// Asked once per window, in window order, by the inversion stage.
pub trait PromptFeed: Send {
    /// The conditions of window `index`, whose first frame is at `t` seconds.
    ///
    /// # Errors
    /// Encoding a prompt failed (the text encoder's session).
    fn for_window(&mut self, index: usize, t: f64) -> Result<Arc<WindowConditions>, String>;
}

/// The same conditions for every window.
pub struct FixedPrompts(pub Arc<WindowConditions>);

impl PromptFeed for FixedPrompts {
    fn for_window(&mut self, _: usize, _: f64) -> Result<Arc<WindowConditions>, String> {
        Ok(self.0.clone())
    }
}

/// A stream's one edit, as the user can change it while the stream runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamPrompt {
    pub source: String,
    pub prompt: String,
    pub negative: Option<String>,
    pub guidance: f32,
}

/// Where a new prompt is pushed from another thread (the daemon's API); taken at the next
/// window.
pub type PromptInbox = Arc<Mutex<Option<StreamPrompt>>>;

/// Reads and validates a prompt file into a `StreamPrompt` (the command line's layers
/// included), with the settings it changes that the stream keeps (one line each), or says
/// why not in one line.
pub type PromptResolver =
    Box<dyn Fn(&std::path::Path) -> Result<(StreamPrompt, Vec<String>), String> + Send>;

/// The prompt in force and how it changed, shared with whoever reports on the stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PromptStatus {
    pub prompt: String,
    pub source: String,
    pub version: u64,
    pub changes: u64,
    pub refused: u64,
    /// The last refusal, verbatim.
    pub last_error: Option<String>,
    /// Window index and first timestamp where the prompt in force took effect.
    pub since_window: usize,
    pub since_t: f64,
    /// Seconds from the prompt file's change to the window that took it (file changes only).
    pub pickup_s: Option<f64>,
    /// Settings the prompt file last changed that the stream keeps until it restarts
    /// (strength, steps, ...), one line each; empty when the file agrees with the stream.
    pub held: Vec<String>,
}

/// Per-window prompts of a stream.
pub struct LivePrompts {
    text: TextEncoder,
    file: Option<PathBuf>,
    resolver: Option<PromptResolver>,
    seed: u64,
    /// The stream's local blending threshold (0 = off).
    blend: f32,
    /// The stream's edit controls.
    controls: EditControls,
    /// Modification time and length of the file as last read.
    seen: Option<(Option<SystemTime>, u64)>,
    current: StreamPrompt,
    conditions: Arc<WindowConditions>,
    pushed: PromptInbox,
    status: Arc<Mutex<PromptStatus>>,
}

impl LivePrompts {
    /// Starts with `initial` (already validated). With `file`, the file is watched and each
    /// change goes through `resolver`; a prompt put in `inbox` wins over the file.
    ///
    /// # Errors
    /// Encoding the initial prompt failed.
    pub fn new(
        mut text: TextEncoder,
        initial: StreamPrompt,
        file: Option<(PathBuf, PromptResolver)>,
        inbox: PromptInbox,
        seed: u64,
        blend: f32,
        controls: EditControls,
    ) -> Result<LivePrompts, String> {
        let conditions = Arc::new(encode(&mut text, &initial, 0, seed, blend, controls)?);
        let (file, resolver) = match file {
            Some((f, r)) => (Some(f), Some(r)),
            None => (None, None),
        };
        let seen = file.as_deref().map(stamp);
        let status = PromptStatus {
            prompt: initial.prompt.clone(),
            source: initial.source.clone(),
            ..Default::default()
        };
        Ok(LivePrompts {
            text,
            file,
            resolver,
            seed,
            blend,
            controls,
            seen,
            current: initial,
            conditions,
            pushed: inbox,
            status: Arc::new(Mutex::new(status)),
        })
    }

    pub fn status(&self) -> Arc<Mutex<PromptStatus>> {
        self.status.clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut PromptStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// A new valid prompt from the file, if it changed; refusals are logged once per change.
    fn poll_file(&mut self) -> Option<(StreamPrompt, Option<f64>)> {
        let (file, resolver) = (self.file.as_ref()?, self.resolver.as_ref()?);
        let now = stamp(file);
        if self.seen == Some(now) {
            return None;
        }
        match resolver(file) {
            Ok((p, held)) => {
                self.seen = Some(now);
                if !held.is_empty() {
                    tracing::warn!(
                        "{}: {}: fixed while the stream runs; restart it for {}",
                        file.display(),
                        held.join(", "),
                        if held.len() == 1 { "this" } else { "these" }
                    );
                }
                self.set_status(|s| s.held = held);
                let age = now
                    .0
                    .and_then(|t| t.elapsed().ok())
                    .map(|a| a.as_secs_f64());
                (p != self.current).then_some((p, age))
            }
            // Written a moment ago: perhaps half-saved (an editor truncates, then writes);
            // asked again at the next window before it counts as refused.
            Err(_) if recently_modified(now.0) => None,
            Err(e) => {
                self.seen = Some(now);
                tracing::warn!(
                    "{}: prompt change refused, keeping \"{}\": {e}",
                    file.display(),
                    self.current.prompt
                );
                self.set_status(|s| {
                    s.refused += 1;
                    s.last_error = Some(e);
                });
                None
            }
        }
    }
}

impl PromptFeed for LivePrompts {
    fn for_window(&mut self, index: usize, t: f64) -> Result<Arc<WindowConditions>, String> {
        let pushed = self.pushed.lock().ok().and_then(|mut p| p.take());
        let Some((next, pickup)) = pushed.map(|p| (p, None)).or_else(|| self.poll_file()) else {
            return Ok(self.conditions.clone());
        };
        let version = self.conditions.version + 1;
        let new = encode(
            &mut self.text,
            &next,
            version,
            self.seed,
            self.blend,
            self.controls,
        )?;
        tracing::info!(
            "prompt changed at window {index} (t = {t:.3} s): \"{}\" -> \"{}\"",
            self.current.prompt,
            next.prompt
        );
        // This window: halfway; the next ones: the new prompt.
        let transition = Arc::new(halfway(&self.conditions, &new));
        self.current = next;
        self.conditions = Arc::new(new);
        let current = self.current.clone();
        self.set_status(|s| {
            s.prompt = current.prompt;
            s.source = current.source;
            s.version = version;
            s.changes += 1;
            s.since_window = index;
            s.since_t = t;
            s.pickup_s = pickup;
        });
        Ok(transition)
    }
}

fn recently_modified(t: Option<SystemTime>) -> bool {
    t.and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < std::time::Duration::from_millis(500))
}

/// The file's modification time and length: a change in either means "read it again".
fn stamp(path: &std::path::Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

/// Text states for `p`: the source, and the one edit with its guidance branch.
pub fn encode(
    text: &mut TextEncoder,
    p: &StreamPrompt,
    version: u64,
    seed: u64,
    blend: f32,
    controls: EditControls,
) -> Result<WindowConditions, String> {
    let e = |m: crate::model::ModelError| m.to_string();
    let source = text.encode(&[&p.source]).map_err(e)?;
    let mut cond = Conditioning::new(text.encode(&[&p.prompt]).map_err(e)?);
    if p.guidance != 1.0 {
        cond.uncond = Some(
            text.encode(&[p.negative.as_deref().unwrap_or("")])
                .map_err(e)?,
        );
        cond.guidance = p.guidance;
    }
    Ok(WindowConditions {
        version,
        source,
        edits: vec![EditCondition {
            cond,
            seed,
            blend,
            steps: None,
            controls,
        }],
        prompts: vec![p.prompt.clone()],
    })
}

/// The mean of two sets of text states (same shapes; the newer's where they differ).
fn mean_states(a: &Array3<f32>, b: &Array3<f32>) -> Array3<f32> {
    if a.shape() == b.shape() {
        (a + b) * 0.5
    } else {
        b.clone()
    }
}

/// Conditions halfway between `old` and `new`: the transition window.
fn halfway(old: &WindowConditions, new: &WindowConditions) -> WindowConditions {
    let edits = old
        .edits
        .iter()
        .zip(&new.edits)
        .map(|(o, n)| EditCondition {
            cond: Conditioning {
                cond: mean_states(&o.cond.cond, &n.cond.cond),
                uncond: match (&o.cond.uncond, &n.cond.uncond) {
                    (Some(a), Some(b)) => Some(mean_states(a, b)),
                    (_, b) => b.clone(),
                },
                guidance: (o.cond.guidance + n.cond.guidance) / 2.0,
            },
            seed: n.seed,
            blend: n.blend,
            steps: n.steps,
            controls: n.controls,
        })
        .collect();
    WindowConditions {
        version: new.version,
        source: mean_states(&old.source, &new.source),
        edits,
        prompts: new.prompts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conds(v: f32, guidance: f32) -> WindowConditions {
        let s = Array3::from_elem((1, 2, 3), v);
        let mut c = Conditioning::new(s.clone());
        c.uncond = Some(s.clone() * 0.0);
        c.guidance = guidance;
        WindowConditions {
            version: 0,
            source: s,
            edits: vec![EditCondition {
                cond: c,
                seed: 0,
                blend: 0.0,
                steps: None,
                controls: EditControls::default(),
            }],
            prompts: vec![format!("p{v}")],
        }
    }

    #[test]
    fn the_transition_is_halfway() {
        let h = halfway(&conds(1.0, 5.0), &conds(3.0, 7.0));
        assert!(h.edits[0].cond.cond.iter().all(|&x| x == 2.0));
        assert!(h.source.iter().all(|&x| x == 2.0));
        assert_eq!(h.edits[0].cond.guidance, 6.0);
        assert_eq!(h.prompts, vec!["p3".to_string()]);
    }
}
