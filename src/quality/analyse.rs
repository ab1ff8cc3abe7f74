//! The analyser: RGB frames of the demo domain → background colour and texture, and the
//! objects on it (colour, shape, area, centroid, labelled position).
//!
//! Per frame, in order:
//! 1. **Background.** Each pixel votes for its nearest background swatch when it is within
//!    reach of it (`reach`, below); the swatch with most votes is the background, and the
//!    voters' mean is its observed colour `b`.
//! 2. **Texture.** Textures add a grey offset (±amplitude on every channel) to `b`, so each
//!    pixel's residual is split into that offset `r` (the mean of `p - b` over channels) and
//!    what is left across the grey axis. Over background pixels away from objects, a
//!    standard deviation of `r` above `texture_std` that alternates across the frame (its
//!    autocorrelation reaches −`texture_anticorrelation` at some shift; noise does not)
//!    means textured; then stripes (vertical,
//!    so constant down a column) change little from row to row, checks change as much down
//!    as across.
//! 3. **Objects.** A pixel is foreground when its distance to the background's texture band
//!    (`b + t·(1,1,1)`, |t| up to the measured amplitude) exceeds `mask_fraction` of the
//!    distance from that band to the nearest object swatch. 4-connected components of at
//!    least `min_area_fraction` of the frame are objects.
//! 4. **Each object.** Colour: the mean of its interior pixels → nearest object swatch.
//!    Coverage: a soft mask, each pixel's position between `b` and the object's colour (with
//!    the grey axis projected out, so texture does not leak in); area and centroid come from
//!    it, which keeps them sub-pixel accurate through anti-aliasing and 4:2:0 chroma. Shape:
//!    the nearest palette shape by a signature of complex moments that blur does not change
//!    (`MomentSums`). The bounding-box fill ratio and centroid offset (circle ≈ 0.785, square
//!    ≈ 1, diamond ≈ 0.5 centred, triangle ≈ 0.5 with the centroid h/6 low) are reported too,
//!    but at 10-20 px one pixel of bounding box moves the fill ratio by 15 %, and chroma
//!    bleed rounds corners, so they do not decide; matching drawn templates (IoU) did no
//!    better, since the blur is worth as much overlap as a square's corners.
//!    Position: the centroid, except for triangles, whose labelled position is the bounding
//!    box's centre, a third of the half-height above the centroid.

use serde::Serialize;

use super::moments::{position_of, reference_signature, MomentSums};
use super::palette::{nearest, Palette, Shape, Texture};
use crate::media::RgbFrame;

/// Thresholds. The defaults suit the demo domain at 64 px and its H.264 encodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyserConfig {
    /// Smallest component kept as an object, as a fraction of the frame's pixels (0.006 =
    /// 25 px at 64x64; the smallest labelled object covers about 90).
    pub min_area_fraction: f32,
    /// Foreground threshold, as a fraction of the distance from the background band to the
    /// nearest object swatch: 0.5 puts anti-aliased edges at half coverage on the boundary.
    pub mask_fraction: f32,
    /// Lower bound on the foreground distance (RGB units), so codec noise is never an object.
    pub min_mask_distance: f32,
    /// Standard deviation (RGB units) of the background's grey offset above which it is
    /// textured. Plain backgrounds show about 1 after H.264; textures ±16 show about 15.
    pub texture_std: f32,
    /// Largest misfit for an object's shape to count as its nearest palette shape: the
    /// distance between their signatures times √area (pixel noise in the signature shrinks
    /// like 1/√area, so small objects get more room). The held-out sources stay below 0.24
    /// (a small triangle on stripes); a diamond haloed by a generated frame's glow reaches
    /// 0.4.
    pub max_shape_misfit: f32,
    /// A textured background alternates: the grey offset's autocorrelation across the frame
    /// must fall below minus this at some shift (noise, which also has spread, does not).
    pub texture_anticorrelation: f32,
    /// Textured backgrounds whose mean vertical change is below this fraction of the mean
    /// horizontal change are striped; above, checkered.
    pub stripe_ratio: f32,
}

impl Default for AnalyserConfig {
    fn default() -> Self {
        AnalyserConfig {
            min_area_fraction: 0.006,
            mask_fraction: 0.5,
            min_mask_distance: 20.0,
            texture_std: 5.0,
            texture_anticorrelation: 0.3,
            max_shape_misfit: 0.35,
            stripe_ratio: 0.5,
        }
    }
}

/// One object found in a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectInfo {
    /// Nearest object swatch to `rgb`.
    pub colour: String,
    /// Mean colour of the object's interior.
    pub rgb: [f32; 3],
    /// Distance (RGB units) from `rgb` to that swatch.
    pub colour_distance: f32,
    pub shape: Shape,
    /// Distance of the object's shape signature (below) from the chosen shape's.
    pub shape_distance: f32,
    /// How much nearer that is than the runner-up shape (confidence).
    pub shape_margin: f32,
    /// `shape_distance` is within the misfit allowed (`max_shape_misfit`): the object has
    /// that shape. When not,
    /// no palette shape fits (a blob, a haloed or torn object) and `shape` is only the least
    /// bad guess; scoring then counts the shape as wrong.
    pub shape_fits: bool,
    /// Blur-invariant shape signature: complex central moments of orders 2, 3, 4 of the soft
    /// mask, normalised by area (re, im for each).
    pub signature: [f32; 6],
    /// Soft area in pixels.
    pub area: f32,
    /// Soft-mask centroid (x, y) in pixel units, (0, 0) the top-left corner of the frame (a
    /// pixel's centre is at +0.5).
    pub centroid: [f32; 2],
    /// Where the labels put it: the centroid, or for a triangle its bounding box's centre.
    pub position: [f32; 2],
    /// Area / bounding-box area of the hard mask.
    pub fill: f32,
    /// (centroid y − bounding-box centre y) / bounding-box height, hard mask.
    pub offset: f32,
    /// Hard-mask bounding box: x0, y0, x1, y1 (inclusive).
    pub bbox: [u32; 4],
}

/// What one frame shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameAnalysis {
    /// Nearest background swatch (majority of the pixels).
    pub background: String,
    /// The background pixels' mean colour.
    pub background_rgb: [f32; 3],
    /// Share of the frame's pixels that voted for `background`.
    pub background_share: f32,
    pub texture: Texture,
    /// Standard deviation of the background's grey offset (RGB units).
    pub texture_std: f32,
    /// The offset's lowest autocorrelation across the frame over shifts of 2 to a quarter of
    /// the width: near −1 for stripes or checks (half a period), near 0 for noise.
    pub texture_periodicity: f32,
    /// Mean vertical / mean horizontal change of that offset (0 for stripes, ~1 for checks).
    pub texture_ratio: f32,
    /// Objects, left to right by position.
    pub objects: Vec<ObjectInfo>,
    /// Foreground components too small to be objects.
    pub specks: usize,
}

/// A clip: every frame, and what most frames agree on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipAnalysis {
    pub frames: Vec<FrameAnalysis>,
    pub summary: ClipSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipSummary {
    /// Majority over frames.
    pub background: String,
    pub texture: Texture,
    /// The most common per-frame object count.
    pub object_count: usize,
    /// Objects followed through the frames that have `object_count` objects, left to right by
    /// x in the first such frame.
    pub objects: Vec<Track>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Track {
    /// Majority over the frames it was seen in (None: mostly no palette shape fits).
    pub shape: Option<Shape>,
    pub colour: String,
    /// Per frame; None where the frame's object count was not the clip's.
    pub positions: Vec<Option<[f32; 2]>>,
}

pub struct Analyser {
    palette: Palette,
    cfg: AnalyserConfig,
    /// The signature of each palette shape.
    references: Vec<(Shape, [f32; 6])>,
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// `v` split into its grey offset (mean over channels) and the distance across the grey axis.
fn grey_split(v: [f32; 3]) -> (f32, f32) {
    let r = (v[0] + v[1] + v[2]) / 3.0;
    let across = sub(v, [r, r, r]);
    (r, dot(across, across).sqrt())
}

/// Distance from `p` to the band `b + t·(1,1,1)`, |t| <= `amp`.
fn band_distance(p: [f32; 3], b: [f32; 3], amp: f32) -> f32 {
    let (r, across) = grey_split(sub(p, b));
    let along = (r.abs() - amp).max(0.0) * 3f32.sqrt();
    (across * across + along * along).sqrt()
}

/// The most common value (the first seen on ties).
pub(crate) fn majority<T: PartialEq + Clone>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for it in items {
        match counts.iter_mut().find(|(v, _)| *v == it) {
            Some((_, n)) => *n += 1,
            None => counts.push((it, 1)),
        }
    }
    let mut best: Option<(T, usize)> = None;
    for (v, n) in counts {
        if best.as_ref().is_none_or(|(_, m)| n > *m) {
            best = Some((v, n));
        }
    }
    best.map(|(v, _)| v)
}

/// Greedy nearest matching: pairs (i, j) with the smallest distances first, each index used
/// once. Deterministic (ties by index). Enough for objects that never overlap.
pub(crate) fn match_nearest(a: &[[f32; 2]], b: &[[f32; 2]]) -> Vec<(usize, usize, f32)> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (i, p) in a.iter().enumerate() {
        for (j, q) in b.iter().enumerate() {
            let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            pairs.push((d, i, j));
        }
    }
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    let mut out = Vec::new();
    for (d, i, j) in pairs {
        if !used_a[i] && !used_b[j] {
            used_a[i] = true;
            used_b[j] = true;
            out.push((i, j, d));
        }
    }
    out.sort_by_key(|m| m.0);
    out
}

/// Soft coverage fades out for pixels whose distance from the background–object colour line
/// goes from `OFF_LINE_CUT − OFF_LINE_FADE` to `OFF_LINE_CUT` times the colour difference
/// (chroma bleed on clean edges stays below about 0.3).
const OFF_LINE_CUT: f32 = 0.75;
const OFF_LINE_FADE: f32 = 0.3;

impl Analyser {
    pub fn new(palette: Palette, cfg: AnalyserConfig) -> Analyser {
        let references = palette
            .shapes
            .iter()
            .map(|&s| (s, reference_signature(s)))
            .collect();
        Analyser {
            palette,
            cfg,
            references,
        }
    }

    pub fn palette(&self) -> &Palette {
        &self.palette
    }

    /// Distance from the band of background `b` (amplitude `amp`) to the nearest object swatch.
    fn object_gap(&self, b: [f32; 3], amp: f32) -> f32 {
        self.palette
            .objects
            .iter()
            .map(|o| band_distance(o.rgb_f32(), b, amp))
            .fold(f32::INFINITY, f32::min)
    }

    /// Analyses one frame.
    pub fn frame(&self, f: &RgbFrame) -> FrameAnalysis {
        let (w, h) = (f.width as usize, f.height as usize);
        let n = w * h;
        let px: Vec<[f32; 3]> = f
            .data
            .chunks_exact(3)
            .map(|c| [c[0] as f32, c[1] as f32, c[2] as f32])
            .collect();

        // 1. Background: votes from pixels within reach of a background swatch (half its gap
        //    to the objects, allowing a texture of up to 24), else from every pixel.
        let bgs = &self.palette.backgrounds;
        let reach: Vec<f32> = bgs
            .iter()
            .map(|b| 0.5 * self.object_gap(b.rgb_f32(), 24.0))
            .collect();
        let mut vote: Vec<Option<usize>> = px
            .iter()
            .map(|p| {
                let (i, _) = nearest(bgs, *p);
                (band_distance(*p, bgs[i].rgb_f32(), 24.0) <= reach[i]).then_some(i)
            })
            .collect();
        if vote.iter().filter(|v| v.is_some()).count() < n / 10 {
            vote = px.iter().map(|p| Some(nearest(bgs, *p).0)).collect();
        }
        let bg = majority(vote.iter().flatten().copied()).unwrap_or(0);
        let voters: Vec<usize> = (0..n).filter(|&i| vote[i] == Some(bg)).collect();
        let mut b = [0f32; 3];
        if voters.is_empty() {
            b = bgs[bg].rgb_f32();
        } else {
            let mut s = [0f64; 3];
            for &i in &voters {
                for c in 0..3 {
                    s[c] += px[i][c] as f64;
                }
            }
            for c in 0..3 {
                b[c] = (s[c] / voters.len() as f64) as f32;
            }
        }

        // 2. The background's grey offset: its spread sets the texture band's half-width.
        let offset: Vec<f32> = px.iter().map(|p| grey_split(sub(*p, b)).0).collect();
        let spread = std_dev(voters.iter().map(|&i| offset[i]));
        let amp = 1.25 * spread + 3.0;

        // 3. Foreground mask and its components.
        let thr =
            (self.cfg.mask_fraction * self.object_gap(b, amp)).max(self.cfg.min_mask_distance);
        let fg: Vec<bool> = px.iter().map(|p| band_distance(*p, b, amp) > thr).collect();
        let (labels, comps) = components(&fg, w, h);
        let min_area = (self.cfg.min_area_fraction * n as f32).max(1.0);
        let kept: Vec<usize> = (0..comps.len())
            .filter(|&k| comps[k].len() as f32 >= min_area)
            .collect();
        let specks = comps.len() - kept.len();

        // Texture, from background pixels not next to any foreground pixel.
        let near_fg = dilate(&fg, w, h, 1);
        let clean: Vec<bool> = (0..n).map(|i| vote[i] == Some(bg) && !near_fg[i]).collect();
        let clean_std = std_dev((0..n).filter(|&i| clean[i]).map(|i| offset[i]));
        let (mut dv, mut dh, mut nv, mut nh) = (0f64, 0f64, 0u64, 0u64);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if !clean[i] {
                    continue;
                }
                if x + 1 < w && clean[i + 1] {
                    dh += (offset[i + 1] - offset[i]).abs() as f64;
                    nh += 1;
                }
                if y + 1 < h && clean[i + w] {
                    dv += (offset[i + w] - offset[i]).abs() as f64;
                    nv += 1;
                }
            }
        }
        let ratio = if nh > 0 && nv > 0 && dh > 0.0 {
            ((dv / nv as f64) / (dh / nh as f64)) as f32
        } else {
            1.0
        };
        let periodicity = min_autocorrelation(&offset, &clean, w, h);
        let texture = self.texture_of(clean_std, periodicity, ratio);

        // 4. Objects.
        let mut objects: Vec<ObjectInfo> = kept
            .iter()
            .map(|&k| self.object(&px, &labels, k, &comps[k], b, w, h))
            .collect();
        objects.sort_by(|a, b| a.position[0].total_cmp(&b.position[0]));

        FrameAnalysis {
            background: bgs[bg].name.clone(),
            background_rgb: b,
            background_share: voters.len() as f32 / n.max(1) as f32,
            texture,
            texture_std: clean_std,
            texture_periodicity: periodicity,
            texture_ratio: ratio,
            objects,
            specks,
        }
    }

    fn texture_of(&self, std: f32, periodicity: f32, ratio: f32) -> Texture {
        let textures = &self.palette.textures;
        let textured: Vec<Texture> = textures.iter().copied().filter(|t| t.textured()).collect();
        if std < self.cfg.texture_std
            || periodicity > -self.cfg.texture_anticorrelation
            || textured.is_empty()
        {
            return Texture::Plain;
        }
        if textured.len() == 1 {
            return textured[0];
        }
        let guess = if ratio < self.cfg.stripe_ratio {
            Texture::Striped
        } else {
            Texture::Checkered
        };
        if textured.contains(&guess) {
            guess
        } else {
            textured[0]
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn object(
        &self,
        px: &[[f32; 3]],
        labels: &[u32],
        k: usize,
        pixels: &[usize],
        b: [f32; 3],
        w: usize,
        h: usize,
    ) -> ObjectInfo {
        let id = k as u32 + 1;
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        for &i in pixels {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        // Colour: interior pixels (all four neighbours in the object), else all of them.
        let mine = |x: isize, y: isize| {
            x >= 0
                && y >= 0
                && (x as usize) < w
                && (y as usize) < h
                && labels[y as usize * w + x as usize] == id
        };
        let interior: Vec<usize> = pixels
            .iter()
            .copied()
            .filter(|&i| {
                let (x, y) = ((i % w) as isize, (i / w) as isize);
                mine(x - 1, y) && mine(x + 1, y) && mine(x, y - 1) && mine(x, y + 1)
            })
            .collect();
        let src = if interior.len() >= 4 {
            &interior
        } else {
            pixels
        };
        let mut s = [0f64; 3];
        for &i in src {
            for c in 0..3 {
                s[c] += px[i][c] as f64;
            }
        }
        let rgb = s.map(|v| (v / src.len() as f64) as f32);
        let (ci, cd) = nearest(&self.palette.objects, rgb);

        // Soft coverage in a window around the object: 0 at b, 1 at the object's colour,
        // along the full colour difference. A pixel far off that line (more than ~half the
        // difference) is neither a blend of the two nor either one, say a halo of another
        // colour that a generated frame put around the object: it fades out of the coverage,
        // so it cannot make a diamond look round.
        let d = sub(rgb, b);
        let dd = dot(d, d).max(1e-3);
        let pad = 3usize;
        let (wx0, wy0) = (x0.saturating_sub(pad), y0.saturating_sub(pad));
        let (wx1, wy1) = ((x1 + pad).min(w - 1), (y1 + pad).min(h - 1));
        let ww = wx1 - wx0 + 1;
        let wh = wy1 - wy0 + 1;
        // Pixels within 2 of the object, and not in another object.
        let mut own = vec![false; ww * wh];
        for &i in pixels {
            own[(i / w - wy0) * ww + (i % w - wx0)] = true;
        }
        let near = dilate(&own, ww, wh, 2);
        let mut alpha = vec![0f32; ww * wh];
        let mut m = MomentSums::default();
        for y in 0..wh {
            for x in 0..ww {
                let j = y * ww + x;
                let i = (y + wy0) * w + (x + wx0);
                if !near[j] || (labels[i] != 0 && labels[i] != id) {
                    continue;
                }
                let v = sub(px[i], b);
                let t = dot(v, d) / dd;
                let off = sub(v, [t * d[0], t * d[1], t * d[2]]);
                let off_line = (dot(off, off) / dd).sqrt();
                let a =
                    t.clamp(0.0, 1.0) * ((OFF_LINE_CUT - off_line) / OFF_LINE_FADE).clamp(0.0, 1.0);
                alpha[j] = a;
                m.add_mass((x + wx0) as f64 + 0.5, (y + wy0) as f64 + 0.5, a as f64);
            }
        }
        let cen = m.centroid();
        for y in 0..wh {
            for x in 0..ww {
                let a = alpha[y * ww + x];
                if a > 0.0 {
                    m.add_moments(
                        (x + wx0) as f64 + 0.5,
                        (y + wy0) as f64 + 0.5,
                        a as f64,
                        cen,
                    );
                }
            }
        }
        let centroid = [cen.0 as f32, cen.1 as f32];
        let area = m.w as f32;
        let signature = m.signature();

        // Shape: the palette shape with the nearest signature.
        let mut ranked: Vec<(f32, Shape)> = self
            .references
            .iter()
            .map(|(shape, r)| {
                let d2: f32 = signature
                    .iter()
                    .zip(r)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                (d2.sqrt(), *shape)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let best = (ranked[0].1, ranked[0].0);
        let runner_up = ranked.get(1).map(|r| r.0);
        let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        ObjectInfo {
            colour: self.palette.objects[ci].name.clone(),
            rgb,
            colour_distance: cd,
            shape: best.0,
            shape_distance: best.1,
            shape_fits: best.1 * area.max(0.0).sqrt() <= self.cfg.max_shape_misfit,
            shape_margin: runner_up.map_or(f32::INFINITY, |r| r - best.1),
            signature,
            area,
            centroid,
            position: position_of(best.0, area, centroid),
            fill: pixels.len() as f32 / (bw * bh),
            offset: (centroid[1] - (y0 as f32 + bh / 2.0)) / bh,
            bbox: [x0 as u32, y0 as u32, x1 as u32, y1 as u32],
        }
    }

    /// Analyses every frame of a clip and summarises them.
    pub fn clip(&self, frames: &[RgbFrame]) -> ClipAnalysis {
        let frames: Vec<FrameAnalysis> = frames.iter().map(|f| self.frame(f)).collect();
        let summary = summarise(&frames);
        ClipAnalysis { frames, summary }
    }
}

fn summarise(frames: &[FrameAnalysis]) -> ClipSummary {
    let background = majority(frames.iter().map(|f| f.background.clone())).unwrap_or_default();
    let texture = majority(frames.iter().map(|f| f.texture)).unwrap_or(Texture::Plain);
    let object_count = majority(frames.iter().map(|f| f.objects.len())).unwrap_or(0);
    // Follow the objects through the frames that have the usual count.
    struct Seen {
        positions: Vec<Option<[f32; 2]>>,
        shapes: Vec<Option<Shape>>,
        colours: Vec<String>,
    }
    let mut tracks: Vec<Seen> = Vec::new();
    let mut last: Vec<[f32; 2]> = Vec::new();
    for (fi, f) in frames.iter().enumerate() {
        if f.objects.len() != object_count || object_count == 0 {
            continue;
        }
        let pos: Vec<[f32; 2]> = f.objects.iter().map(|o| o.position).collect();
        if tracks.is_empty() {
            for _ in 0..object_count {
                tracks.push(Seen {
                    positions: vec![None; frames.len()],
                    shapes: Vec::new(),
                    colours: Vec::new(),
                });
            }
            last = pos.clone();
        }
        for (t, o, _) in match_nearest(&last, &pos) {
            let obj = &f.objects[o];
            tracks[t].positions[fi] = Some(obj.position);
            tracks[t].shapes.push(obj.shape_fits.then_some(obj.shape));
            tracks[t].colours.push(obj.colour.clone());
            last[t] = obj.position;
        }
    }
    let objects = tracks
        .into_iter()
        .map(|t| Track {
            shape: majority(t.shapes).flatten(),
            colour: majority(t.colours).unwrap_or_default(),
            positions: t.positions,
        })
        .collect();
    ClipSummary {
        background,
        texture,
        object_count,
        objects,
    }
}

/// The lowest autocorrelation of `v` (over `mask`ed pixels) between pixels `lag` apart across
/// a row, for lags 2 ..= width / 4. 0 when there are too few pairs.
fn min_autocorrelation(v: &[f32], mask: &[bool], w: usize, h: usize) -> f32 {
    let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
    for (x, &m) in v.iter().zip(mask) {
        if m {
            n += 1.0;
            s += *x as f64;
            s2 += (*x as f64) * (*x as f64);
        }
    }
    if n < 2.0 {
        return 0.0;
    }
    let mu = s / n;
    let var = s2 / n - mu * mu;
    if var <= 1e-9 {
        return 0.0;
    }
    let mut lowest = 0f64;
    for lag in 2..=(w / 4).max(2) {
        let (mut c, mut pairs) = (0f64, 0u64);
        for y in 0..h {
            for x in 0..w.saturating_sub(lag) {
                let (i, j) = (y * w + x, y * w + x + lag);
                if mask[i] && mask[j] {
                    c += (v[i] as f64 - mu) * (v[j] as f64 - mu);
                    pairs += 1;
                }
            }
        }
        if pairs >= 16 {
            lowest = lowest.min(c / (pairs as f64 * var));
        }
    }
    lowest as f32
}

fn std_dev(values: impl Iterator<Item = f32>) -> f32 {
    let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
    for v in values {
        n += 1.0;
        s += v as f64;
        s2 += (v as f64) * (v as f64);
    }
    if n < 2.0 {
        return 0.0;
    }
    let m = s / n;
    ((s2 / n - m * m).max(0.0)).sqrt() as f32
}

/// 4-connected components of `mask`: per-pixel labels (0 = none, k + 1 = component k) and
/// each component's pixels, in row-major order of their first pixel.
fn components(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<Vec<usize>>) {
    let mut labels = vec![0u32; mask.len()];
    let mut comps = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = comps.len() as u32 + 1;
        let mut pixels = Vec::new();
        labels[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if mask[j] && labels[j] == 0 {
                    labels[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        pixels.sort_unstable();
        comps.push(pixels);
    }
    (labels, comps)
}

/// `mask` grown by `r` pixels (a square neighbourhood).
fn dilate(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            if !mask[y * w + x] {
                continue;
            }
            for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                    out[yy * w + xx] = true;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "analyse_tests.rs"]
mod tests;
