//! An analysed clip against the scene it should show. In every frame the detected objects
//! are matched to the expected ones by nearest position (greedy, closest pairs first); each
//! expected object's shape and colour are then the majority over the frames it was matched
//! in, and its motion error the distance from its labelled path.

use serde::Serialize;

use super::analyse::{majority, match_nearest, ClipAnalysis};
use super::heldout::EditKind;
use super::palette::{Shape, Texture};
use crate::media::RgbFrame;

/// What a clip should show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expected {
    pub background: String,
    pub texture: Texture,
    /// Left to right by x in the first frame.
    pub objects: Vec<ExpectedObject>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectedObject {
    pub shape: Shape,
    pub colour: String,
    /// Position per frame.
    #[serde(skip)]
    pub path: Vec<[f32; 2]>,
}

/// One expected object in one frame: what it was matched to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Seen {
    /// None: no palette shape fits what was seen.
    pub shape: Option<Shape>,
    pub colour: String,
    pub position: [f32; 2],
    /// Distance from the labelled position, pixels.
    pub error: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameVerdict {
    pub background: String,
    pub texture: Texture,
    pub object_count: usize,
    /// Per expected object: the detection matched to it, if any.
    pub objects: Vec<Option<Seen>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectVerdict {
    /// Majority over the frames it was matched in (None: never matched, or mostly no palette
    /// shape fits).
    pub shape: Option<Shape>,
    pub colour: Option<String>,
    pub shape_ok: bool,
    pub colour_ok: bool,
    pub frames_seen: usize,
    /// Median distance from the labelled path over those frames.
    pub median_error: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub frames: usize,
    /// Majorities over frames.
    pub background: String,
    pub background_ok: bool,
    pub texture: Texture,
    pub texture_ok: bool,
    pub object_count: usize,
    pub count_ok: bool,
    /// Frames whose object count is not the expected one.
    pub ghost_frames: usize,
    pub objects: Vec<ObjectVerdict>,
    /// Median over (frame, matched object) of the distance to the labelled path.
    pub motion_error_px: Option<f32>,
    /// Mean over (frame, matched object) of where the object is seen minus where its label
    /// puts it, (x, y) px: which way the objects stray, when they stray one way (y down).
    pub mean_offset_px: Option<[f32; 2]>,
    pub per_frame: Vec<FrameVerdict>,
}

/// One way an edit falls short of a success with the scene kept (`Comparison::misses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Miss {
    /// The asked-for colour, shape or background is not what the analyser reads.
    NotEdited,
    /// The objects' median distance from their path is over the limit (or none was found).
    OffPath,
    /// Another number of objects than the scene's (majority over frames).
    Count,
    /// Something the edit should have kept changed: the background or its texture, another
    /// object, or the edited object's other attribute.
    Changed,
}

impl Miss {
    pub const ALL: [Miss; 4] = [Miss::NotEdited, Miss::OffPath, Miss::Count, Miss::Changed];
}

fn median(mut v: Vec<f32>) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// Compares `clip` with `expected` frame by frame.
pub fn compare(clip: &ClipAnalysis, expected: &Expected) -> Comparison {
    let frames = clip.frames.len();
    let mut per_frame = Vec::with_capacity(frames);
    let mut offsets: Vec<[f32; 2]> = Vec::new();
    for (fi, f) in clip.frames.iter().enumerate() {
        let want: Vec<[f32; 2]> = expected
            .objects
            .iter()
            .map(|o| o.path.get(fi).copied().unwrap_or([f32::NAN, f32::NAN]))
            .collect();
        let got: Vec<[f32; 2]> = f.objects.iter().map(|o| o.position).collect();
        let mut objects = vec![None; expected.objects.len()];
        for (e, d, error) in match_nearest(&want, &got) {
            let o = &f.objects[d];
            offsets.push([o.position[0] - want[e][0], o.position[1] - want[e][1]]);
            objects[e] = Some(Seen {
                shape: o.shape_fits.then_some(o.shape),
                colour: o.colour.clone(),
                position: o.position,
                error,
            });
        }
        per_frame.push(FrameVerdict {
            background: f.background.clone(),
            texture: f.texture,
            object_count: f.objects.len(),
            objects,
        });
    }
    let objects: Vec<ObjectVerdict> = expected
        .objects
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let seen: Vec<&Seen> = per_frame
                .iter()
                .filter_map(|f| f.objects[k].as_ref())
                .collect();
            let shape = majority(seen.iter().map(|s| s.shape)).flatten();
            let colour = majority(seen.iter().map(|s| s.colour.clone()));
            ObjectVerdict {
                shape_ok: shape == Some(e.shape),
                colour_ok: colour.as_deref() == Some(e.colour.as_str()),
                shape,
                colour,
                frames_seen: seen.len(),
                median_error: median(seen.iter().map(|s| s.error).collect()),
            }
        })
        .collect();
    let all_errors: Vec<f32> = per_frame
        .iter()
        .flat_map(|f| f.objects.iter().flatten().map(|s| s.error))
        .collect();
    let s = &clip.summary;
    Comparison {
        frames,
        background: s.background.clone(),
        background_ok: s.background == expected.background,
        texture: s.texture,
        texture_ok: s.texture == expected.texture,
        object_count: s.object_count,
        count_ok: s.object_count == expected.objects.len(),
        ghost_frames: per_frame
            .iter()
            .filter(|f| f.object_count != expected.objects.len())
            .count(),
        objects,
        motion_error_px: median(all_errors),
        mean_offset_px: (!offsets.is_empty()).then(|| {
            let n = offsets.len() as f32;
            let sum = offsets
                .iter()
                .fold([0.0, 0.0], |a, o| [a[0] + o[0], a[1] + o[1]]);
            [sum[0] / n, sum[1] / n]
        }),
        per_frame,
    }
}

impl Comparison {
    /// The edited attribute is there: the target object's new colour or shape, or the new
    /// background colour.
    pub fn success(&self, kind: EditKind, target: Option<usize>) -> bool {
        let target = target.and_then(|t| self.objects.get(t));
        match kind {
            EditKind::Colour => target.is_some_and(|o| o.colour_ok),
            EditKind::Shape => target.is_some_and(|o| o.shape_ok),
            EditKind::Background => self.background_ok,
        }
    }

    /// The whole expected scene: background colour and texture, object count, every object's
    /// shape and colour, and a median motion error of at most `max_motion_px`.
    pub fn scene_ok(&self, max_motion_px: f32) -> bool {
        self.background_ok
            && self.texture_ok
            && self.count_ok
            && self.objects.iter().all(|o| o.shape_ok && o.colour_ok)
            && self.motion_error_px.is_some_and(|m| m <= max_motion_px)
    }

    /// Why an edit is not a success with the scene kept: empty exactly when
    /// `success(kind, target) && scene_ok(max_motion_px)`, else each way it falls short once,
    /// in `Miss` order.
    pub fn misses(&self, kind: EditKind, target: Option<usize>, max_motion_px: f32) -> Vec<Miss> {
        // What the edit asked to change is judged by `success`; everything else must be kept.
        let kept = |k: usize, o: &ObjectVerdict| match (kind, Some(k) == target) {
            (EditKind::Colour, true) => o.shape_ok,
            (EditKind::Shape, true) => o.colour_ok,
            _ => o.shape_ok && o.colour_ok,
        };
        let changed = !self.texture_ok
            || (kind != EditKind::Background && !self.background_ok)
            || self.objects.iter().enumerate().any(|(k, o)| !kept(k, o));
        [
            (!self.success(kind, target), Miss::NotEdited),
            (
                !self.motion_error_px.is_some_and(|m| m <= max_motion_px),
                Miss::OffPath,
            ),
            (!self.count_ok, Miss::Count),
            (changed, Miss::Changed),
        ]
        .into_iter()
        .filter_map(|(missed, m)| missed.then_some(m))
        .collect()
    }

    /// Every way some frame differs from `expected`, with positions off by more than
    /// `tolerance_px`: empty when each frame is exactly what was asked for.
    pub fn frame_mismatches(&self, expected: &Expected, tolerance_px: f32) -> Vec<String> {
        let mut out = Vec::new();
        for (fi, f) in self.per_frame.iter().enumerate() {
            if f.background != expected.background {
                out.push(format!(
                    "frame {fi}: background {} (expected {})",
                    f.background, expected.background
                ));
            }
            if f.texture != expected.texture {
                out.push(format!(
                    "frame {fi}: texture {} (expected {})",
                    f.texture, expected.texture
                ));
            }
            if f.object_count != expected.objects.len() {
                out.push(format!(
                    "frame {fi}: {} objects (expected {})",
                    f.object_count,
                    expected.objects.len()
                ));
            }
            for (k, (seen, want)) in f.objects.iter().zip(&expected.objects).enumerate() {
                let Some(s) = seen else {
                    out.push(format!(
                        "frame {fi}: object {k} ({} {}) not found",
                        want.colour, want.shape
                    ));
                    continue;
                };
                if s.shape != Some(want.shape) || s.colour != want.colour {
                    let shape = s
                        .shape
                        .map_or("shapeless thing".to_string(), |x| x.to_string());
                    out.push(format!(
                        "frame {fi}: object {k} is a {} {shape} (expected {} {})",
                        s.colour, want.colour, want.shape
                    ));
                }
                if s.error > tolerance_px {
                    out.push(format!(
                        "frame {fi}: object {k} at ({:.2}, {:.2}), {:.2} px from its path",
                        s.position[0], s.position[1], s.error
                    ));
                }
            }
        }
        out
    }
}

/// Mean absolute RGB change between consecutive frames (0–255).
pub fn frame_change(frames: &[RgbFrame]) -> Option<f64> {
    if frames.len() < 2 {
        return None;
    }
    let sum: f64 = frames
        .windows(2)
        .map(|w| crate::pipeline::report::mean_abs_diff(&w[1].data, &w[0].data))
        .sum();
    Some(sum / (frames.len() - 1) as f64)
}

/// Flicker: the output's frame-to-frame change over the source's (1 = as steady as the
/// source; above 1, the edit adds change).
pub fn flicker(output: &[RgbFrame], source: &[RgbFrame]) -> Option<f64> {
    let (o, s) = (frame_change(output)?, frame_change(source)?);
    (s > 0.0).then(|| o / s)
}

/// PSNR (dB, RGB, pooled over frames) of `a` against `b`, capped at 100.
pub fn psnr(a: &[RgbFrame], b: &[RgbFrame]) -> Option<f64> {
    let mut acc = crate::pipeline::report::PsnrAccumulator::default();
    for (x, y) in a.iter().zip(b) {
        acc.add(&x.data, &y.data);
    }
    acc.psnr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::analyse::{ClipSummary, FrameAnalysis, ObjectInfo};

    fn frame(objs: &[(Shape, &str, [f32; 2])]) -> FrameAnalysis {
        FrameAnalysis {
            background: "gray".into(),
            background_rgb: [128.0; 3],
            background_share: 0.9,
            texture: Texture::Plain,
            texture_std: 1.0,
            texture_periodicity: 0.0,
            texture_ratio: 1.0,
            objects: objs
                .iter()
                .map(|&(shape, colour, position)| ObjectInfo {
                    colour: colour.into(),
                    rgb: [0.0; 3],
                    colour_distance: 0.0,
                    shape,
                    shape_distance: 0.0,
                    shape_margin: 0.5,
                    shape_fits: true,
                    signature: [0.0; 6],
                    area: 100.0,
                    centroid: position,
                    position,
                    fill: 0.8,
                    offset: 0.0,
                    bbox: [0; 4],
                })
                .collect(),
            specks: 0,
        }
    }

    #[test]
    fn success_preservation_ghosts_and_motion() {
        let path: Vec<[f32; 2]> = (0..4).map(|i| [10.0 + i as f32, 20.0]).collect();
        let expected = Expected {
            background: "gray".into(),
            texture: Texture::Plain,
            objects: vec![ExpectedObject {
                shape: Shape::Square,
                colour: "blue".into(),
                path: path.clone(),
            }],
        };
        let mut frames: Vec<FrameAnalysis> = path
            .iter()
            .map(|p| frame(&[(Shape::Square, "blue", [p[0] + 0.5, p[1]])]))
            .collect();
        // A ghost in frame 2, and frame 3 sees a circle.
        frames[2] = frame(&[
            (Shape::Square, "blue", [12.5, 20.0]),
            (Shape::Circle, "red", [50.0, 50.0]),
        ]);
        frames[3] = frame(&[(Shape::Circle, "blue", [13.0, 21.0])]);
        let clip = ClipAnalysis {
            summary: ClipSummary {
                background: "gray".into(),
                texture: Texture::Plain,
                object_count: 1,
                objects: vec![],
            },
            frames,
        };
        let c = compare(&clip, &expected);
        assert_eq!(c.ghost_frames, 1);
        assert_eq!(c.objects[0].frames_seen, 4);
        assert!(c.objects[0].shape_ok && c.objects[0].colour_ok);
        assert_eq!(c.motion_error_px, Some(0.5));
        // seen − labelled: +0.5 x in frames 0-2, +1 y in frame 3
        assert_eq!(c.mean_offset_px, Some([0.375, 0.25]));
        assert!(c.success(EditKind::Colour, Some(0)) && c.success(EditKind::Background, None));
        assert!(c.scene_ok(1.5) && !c.scene_ok(0.4));
        let m = c.frame_mismatches(&expected, 0.6);
        assert_eq!(m.len(), 3, "{m:?}"); // frame 2's count, frame 3's shape and position
        assert!(
            m.iter()
                .any(|s| s.contains("frame 3: object 0 is a blue circle")),
            "{m:?}"
        );
    }

    fn verdict(shape_ok: bool, colour_ok: bool) -> ObjectVerdict {
        ObjectVerdict {
            shape: None,
            colour: None,
            shape_ok,
            colour_ok,
            frames_seen: 8,
            median_error: Some(0.5),
        }
    }

    fn comparison(objects: Vec<ObjectVerdict>, background_ok: bool, motion: f32) -> Comparison {
        Comparison {
            frames: 8,
            background: "gray".into(),
            background_ok,
            texture: Texture::Plain,
            texture_ok: true,
            object_count: objects.len(),
            count_ok: true,
            ghost_frames: 0,
            objects,
            motion_error_px: Some(motion),
            mean_offset_px: None,
            per_frame: vec![],
        }
    }

    #[test]
    fn misses_say_why_and_are_empty_exactly_when_the_scene_is_kept() {
        use EditKind::*;
        let kinds = [(Colour, Some(1)), (Shape, Some(1)), (Background, None)];
        // every combination of the verdicts, under every kind of edit
        for bits in 0u32..1 << 7 {
            let b = |i: u32| bits & (1 << i) != 0;
            let mut c = comparison(
                vec![verdict(b(0), b(1)), verdict(b(2), b(3))],
                b(4),
                if b(5) { 0.5 } else { 2.0 },
            );
            c.count_ok = b(6);
            for (kind, target) in kinds {
                let m = c.misses(kind, target, 1.5);
                let ok = c.success(kind, target) && c.scene_ok(1.5);
                assert_eq!(m.is_empty(), ok, "{bits:07b} {kind:?}: {m:?}");
                assert_eq!(m.contains(&Miss::NotEdited), !c.success(kind, target));
                assert_eq!(m.contains(&Miss::OffPath), !b(5));
                assert_eq!(m.contains(&Miss::Count), !b(6));
            }
        }
        // a shape edit that drew the shape in another colour changed something
        let c = comparison(vec![verdict(true, true), verdict(true, false)], true, 0.5);
        assert_eq!(c.misses(Shape, Some(1), 1.5), vec![Miss::Changed]);
        // a colour edit that missed its colour did not change anything else
        assert_eq!(c.misses(Colour, Some(1), 1.5), vec![Miss::NotEdited]);
        // a background edit whose background is wrong is not edited; a wrong object changed
        let c = comparison(vec![verdict(true, false)], false, 2.0);
        assert_eq!(
            c.misses(Background, None, 1.5),
            vec![Miss::NotEdited, Miss::OffPath, Miss::Changed]
        );
    }

    #[test]
    fn flicker_is_relative_to_the_source() {
        let f = |v: u8| {
            let mut f = RgbFrame::new(0, 0, 1, 2, 2);
            f.data.fill(v);
            f
        };
        let src = [f(10), f(12), f(14)];
        let out = [f(10), f(14), f(18)];
        assert_eq!(flicker(&out, &src), Some(2.0));
        assert_eq!(psnr(&src, &src), Some(100.0));
    }
}
