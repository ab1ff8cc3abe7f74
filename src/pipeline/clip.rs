//! CLIP-T and CLIP-F (CONTEXTDIFF.md §7) for bundles with a CLIP pair (`image_encoder.onnx`,
//! `clip_text.onnx`): text alignment is the mean cosine similarity of each output frame's
//! image embedding with the prompt's text embedding; frame consistency the mean cosine
//! similarity of consecutive frames' image embeddings. Frames are resized to the encoder's
//! R x R (aspect not preserved: the metric's own approximation, the same for every run).

use ndarray::Array4;
use serde::Serialize;

use crate::media::scale::{Letterbox, Resizer};
use crate::media::RgbFrame;
use crate::model::{Bundle, Input, Kind, ModelError, Network, RuntimeOptions};

pub struct ClipScorer {
    image: Network,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    resizer: Option<Resizer>,
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

impl ClipScorer {
    /// The scorer, or None when the bundle has no CLIP pair.
    pub fn load(bundle: &Bundle, opts: &RuntimeOptions) -> Result<Option<ClipScorer>, ModelError> {
        if !(bundle.has(Kind::ImageEncoder) && bundle.has(Kind::ClipText)) {
            return Ok(None);
        }
        let entry = bundle.entry(Kind::ImageEncoder).expect("checked above");
        let image = bundle.load(Kind::ImageEncoder, opts)?;
        let size = entry
            .image_size
            .or_else(|| image.static_dim("pixel_values", 2))
            .unwrap_or(224) as u32;
        Ok(Some(ClipScorer {
            image,
            size,
            mean: entry
                .mean
                .unwrap_or([0.481_454_66, 0.457_827_5, 0.408_210_73]),
            std: entry
                .std
                .unwrap_or([0.268_629_54, 0.261_302_6, 0.275_777_1]),
            resizer: None,
        }))
    }

    /// Unit-length image embeddings, one per frame.
    /// Seconds inside ONNX Runtime so far.
    pub fn busy(&self) -> std::time::Duration {
        self.image.busy().0
    }

    pub fn embed(&mut self, frames: &[RgbFrame]) -> Result<Vec<Vec<f32>>, String> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let r = self.size;
        let (w, h) = (frames[0].width, frames[0].height);
        let resizer = self.resizer.get_or_insert_with(|| {
            Resizer::new(Letterbox {
                src_w: w,
                src_h: h,
                content_w: r,
                content_h: r,
                canvas_w: r,
                canvas_h: r,
            })
        });
        let ru = r as usize;
        let mut t = Array4::<f32>::zeros((frames.len(), 3, ru, ru));
        for (mut planes, f) in t.outer_iter_mut().zip(frames) {
            let small = resizer.to_canvas(f).map_err(|e| e.to_string())?;
            for (c, mut plane) in planes.outer_iter_mut().enumerate() {
                let (mean, std) = (self.mean[c], self.std[c]);
                for (dst, &v) in plane.iter_mut().zip(small.data[c..].iter().step_by(3)) {
                    *dst = (v as f32 / 255.0 - mean) / std;
                }
            }
        }
        let e = self
            .image
            .run_one(
                vec![("pixel_values", Input::F32(t.into_dyn()))],
                "image_embeds",
            )
            .map_err(|e| e.to_string())?;
        Ok(e.outer_iter()
            .map(|row| normalized(&row.iter().copied().collect::<Vec<_>>()))
            .collect())
    }
}

/// Unit-length CLIP text embeddings, one per prompt (one session, one batched run).
pub fn text_embeddings(
    bundle: &Bundle,
    opts: &RuntimeOptions,
    prompts: &[&str],
) -> Result<Vec<Vec<f32>>, ModelError> {
    let ids = bundle.clip_tokenizer()?.encode(prompts)?;
    let mut net = bundle.load(Kind::ClipText, opts)?;
    let e = net.run_one(
        vec![("input_ids", Input::Ids(ids.into_dyn()))],
        "text_embeds",
    )?;
    Ok(e.outer_iter()
        .map(|row| normalized(&row.iter().copied().collect::<Vec<_>>()))
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipScores {
    /// Mean cosine similarity of output frames with the prompt (CLIP-T).
    pub clip_t: f64,
    /// Mean cosine similarity of consecutive output frames (CLIP-F).
    pub clip_f: f64,
}

/// Running CLIP-T and CLIP-F for one output.
#[derive(Debug, Clone)]
pub struct ClipAccumulator {
    text: Vec<f32>,
    last: Option<Vec<f32>>,
    t: (f64, u64),
    f: (f64, u64),
}

impl ClipAccumulator {
    pub fn new(text: Vec<f32>) -> ClipAccumulator {
        ClipAccumulator {
            text,
            last: None,
            t: (0.0, 0),
            f: (0.0, 0),
        }
    }

    pub fn add(&mut self, frames: &[Vec<f32>]) {
        for e in frames {
            self.t.0 += cosine(e, &self.text);
            self.t.1 += 1;
            if let Some(l) = &self.last {
                self.f.0 += cosine(e, l);
                self.f.1 += 1;
            }
            self.last = Some(e.clone());
        }
    }

    pub fn result(&self) -> Option<ClipScores> {
        (self.t.1 > 0).then(|| ClipScores {
            clip_t: self.t.0 / self.t.1 as f64,
            clip_f: if self.f.1 > 0 {
                self.f.0 / self.f.1 as f64
            } else {
                1.0
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLIP-T is the mean cosine of each frame with the text, CLIP-F the mean cosine of each
    /// frame with the one before: checked on vectors whose cosines are known by hand.
    #[test]
    fn scores_are_the_means_of_known_cosines() {
        let mut acc = ClipAccumulator::new(vec![1.0, 0.0]);
        assert!(acc.result().is_none(), "no frame, no score");
        // Frames at 0, 60 and 90 degrees from the text, as the scorer hands them over
        // (normalized, whatever length the network gave).
        let s = 3f32.sqrt();
        acc.add(&[normalized(&[2.0, 0.0]), normalized(&[1.0, s])]);
        acc.add(&[normalized(&[0.0, 3.0])]);
        let r = acc.result().unwrap();
        // text: (1 + 0.5 + 0) / 3; frame to frame: 60 then 30 degrees: (0.5 + s/2) / 2.
        assert!((r.clip_t - 0.5).abs() < 1e-6, "{}", r.clip_t);
        let f = (0.5 + f64::from(s) / 2.0) / 2.0;
        assert!((r.clip_f - f).abs() < 1e-6, "{} vs {f}", r.clip_f);
        // One frame: nothing to compare it with.
        let mut one = ClipAccumulator::new(vec![0.0, 1.0]);
        one.add(&[normalized(&[0.0, -2.0])]);
        let r = one.result().unwrap();
        assert_eq!((r.clip_t.round(), r.clip_f), (-1.0, 1.0));
    }
}
