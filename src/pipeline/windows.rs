//! The window planner: which context frames join each window's new frames. Context frames
//! are there for temporal consistency only (the UNet's sparse-causal attention makes every
//! frame attend to a window's first frame); they are edited with the window and dropped before
//! output.
//!
//! - `Anchor::First`: the video's first frame leads every window (`ctxd edit`: one shot).
//! - `Anchor::Rolling`: the previous window's last frame leads the next one, so an endless
//!   stream that changes scene is tied to its recent past, not to a frame minutes old.
//! - `overlap`: the previous window's last `overlap` frames, after the anchor.

use ndarray::s;

use crate::diffusion::{pool, Latent};

/// Which frame ties windows together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    None,
    First,
    Rolling,
}

impl std::str::FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Anchor, String> {
        match s {
            "none" | "off" => Ok(Anchor::None),
            "first" => Ok(Anchor::First),
            "rolling" => Ok(Anchor::Rolling),
            _ => Err(format!("unknown anchor '{s}': use first, rolling or none")),
        }
    }
}

impl Anchor {
    /// How many context frames join every window after the first: the anchor, then the
    /// overlap (the rolling anchor is the overlap's last frame when there is one).
    pub fn context_frames(self, overlap: usize) -> usize {
        match self {
            Anchor::First => 1 + overlap,
            Anchor::Rolling => overlap.max(1),
            Anchor::None => overlap,
        }
    }

    /// New frames in the first window, which has no context: it takes as many more new
    /// frames, so every full window runs through the networks at one shape. A run at larger
    /// shapes than a session ran before gives the CPU arena's free blocks back to the system
    /// (`model/network.rs`), and the windows after it faulted that memory in again: on a
    /// one-clip oracle edit, 42 % of the page faults and half the kernel time.
    pub fn first_window(self, window: usize, overlap: usize) -> usize {
        window.max(1) + self.context_frames(overlap)
    }
}

/// Builds each window's clean latent `[1, C, F, h, w]` from its new frames' latents.
pub struct WindowPlanner {
    anchor: Anchor,
    overlap: usize,
    first: Option<Latent>,
    previous: Option<Latent>,
}

/// A planned window: the latent and how many leading frames are context.
pub struct Planned {
    pub x0: Latent,
    pub context: usize,
}

impl WindowPlanner {
    pub fn new(anchor: Anchor, overlap: usize) -> WindowPlanner {
        WindowPlanner {
            anchor,
            overlap,
            first: None,
            previous: None,
        }
    }

    /// The next window, given its new frames' latents (frames on axis 2).
    ///
    /// # Errors
    /// Latents whose shapes do not match the previous window's (a source that changed size).
    pub fn plan(&mut self, new: Latent) -> Result<Planned, String> {
        let mut parts: Vec<Latent> = Vec::new();
        let frames = |l: &Latent| l.shape()[2];
        match (self.anchor, &self.first, &self.previous) {
            (Anchor::First, Some(a), _) => parts.push(a.clone()),
            // The overlap already starts with the previous window's tail: an anchor there
            // would repeat its last frame.
            (Anchor::Rolling, _, Some(p)) if self.overlap == 0 => {
                let f = frames(p);
                parts.push(p.slice(s![.., .., f - 1..f, .., ..]).to_owned());
            }
            _ => {}
        }
        if self.overlap > 0 {
            if let Some(p) = &self.previous {
                let f = frames(p);
                parts.push(
                    p.slice(s![.., .., f.saturating_sub(self.overlap).., .., ..])
                        .to_owned(),
                );
            }
        }
        let context: usize = parts.iter().map(frames).sum();
        // Assembled in standard layout (ndarray's concatenate along the frame axis gives
        // another one), so the networks read it in place.
        let mut dim = new.raw_dim();
        dim[2] += context;
        // Every element is written below.
        let mut x0 = pool::take(dim);
        let mut at = 0;
        for part in parts.iter().chain(std::iter::once(&new)) {
            let f = frames(part);
            x0.slice_mut(s![.., .., at..at + f, .., ..]).assign(part);
            at += f;
        }
        if self.first.is_none() {
            self.first = Some(new.slice(s![.., .., 0..1, .., ..]).to_owned());
        }
        // Only the tail a later window reads is kept (a whole window's latent is tens of MB
        // at high resolutions): the overlap's frames, or the rolling anchor's last one.
        let keep = match self.anchor {
            Anchor::Rolling => self.overlap.max(1),
            _ => self.overlap,
        };
        let f = frames(&new);
        self.previous = (keep > 0).then(|| {
            new.slice(s![.., .., f.saturating_sub(keep).., .., ..])
                .to_owned()
        });
        pool::give(new);
        Ok(Planned { x0, context })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array5;

    fn frames(values: &[f32]) -> Latent {
        Array5::from_shape_fn((1, 1, values.len(), 1, 1), |(_, _, f, _, _)| values[f])
    }

    fn seq(p: &Planned) -> Vec<f32> {
        p.x0.iter().copied().collect()
    }

    #[test]
    fn the_first_window_takes_the_context_s_place_with_new_frames() {
        // Every full window then has as many frames as the first: 8 new + its context.
        for (anchor, overlap, context) in [
            (Anchor::First, 0, 1),
            (Anchor::First, 2, 3),
            (Anchor::Rolling, 0, 1),
            (Anchor::Rolling, 2, 2),
            (Anchor::None, 0, 0),
            (Anchor::None, 3, 3),
        ] {
            assert_eq!(
                anchor.context_frames(overlap),
                context,
                "{anchor:?} {overlap}"
            );
            let first = anchor.first_window(8, overlap);
            assert_eq!(first, 8 + context);
            let mut w = WindowPlanner::new(anchor, overlap);
            let a = w.plan(frames(&vec![0.; first])).unwrap();
            let b = w.plan(frames(&[1.; 8])).unwrap();
            assert_eq!(a.x0.shape(), b.x0.shape(), "{anchor:?} {overlap}");
            assert_eq!(b.context, context);
        }
    }

    #[test]
    fn first_anchor_leads_every_later_window() {
        let mut w = WindowPlanner::new(Anchor::First, 0);
        let a = w.plan(frames(&[1., 2.])).unwrap();
        assert_eq!((seq(&a), a.context), (vec![1., 2.], 0));
        let b = w.plan(frames(&[3., 4.])).unwrap();
        assert_eq!((seq(&b), b.context), (vec![1., 3., 4.], 1));
        let c = w.plan(frames(&[5.])).unwrap();
        assert_eq!((seq(&c), c.context), (vec![1., 5.], 1));
    }

    #[test]
    fn rolling_anchor_is_the_previous_windows_last_frame() {
        let mut w = WindowPlanner::new(Anchor::Rolling, 0);
        w.plan(frames(&[1., 2.])).unwrap();
        let b = w.plan(frames(&[3., 4.])).unwrap();
        assert_eq!((seq(&b), b.context), (vec![2., 3., 4.], 1));
        let c = w.plan(frames(&[5., 6.])).unwrap();
        assert_eq!((seq(&c), c.context), (vec![4., 5., 6.], 1));
    }

    #[test]
    fn overlap_follows_the_anchor_and_rolling_does_not_repeat_it() {
        let mut w = WindowPlanner::new(Anchor::First, 2);
        w.plan(frames(&[1., 2., 3.])).unwrap();
        let b = w.plan(frames(&[4.])).unwrap();
        assert_eq!((seq(&b), b.context), (vec![1., 2., 3., 4.], 3));
        let mut r = WindowPlanner::new(Anchor::Rolling, 1);
        r.plan(frames(&[1., 2.])).unwrap();
        let b = r.plan(frames(&[3.])).unwrap();
        assert_eq!((seq(&b), b.context), (vec![2., 3.], 1));
    }
}
