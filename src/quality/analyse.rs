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

/// Shape signature: the complex central moments E[(z − z̄)^k] of a mass distribution over
/// the plane (z = x + iy), k = 2, 3, 4, each divided by area^(k/2) so size does not matter,
/// as [Re m2, Im m2, Re m3, Im m3, Re m4, Im m4]. Blurring with a rotation-symmetric kernel
/// adds a variable whose complex moments are all zero, so these stay as they were: the
/// signature survives anti-aliasing, 4:2:0 chroma and a decoder's softness, which move a
/// 12 px square's bounding-box fill ratio by 15 %. Circle: all 0; square and diamond: Re m4
/// = ∓1/60; the triangle is elongated (m2) and lopsided (m3).
#[derive(Default)]
struct MomentSums {
    /// Σw, Σw·x, Σw·y, and Σw·(z − c)^k for k = 2, 3, 4 (real, imaginary).
    w: f64,
    wx: f64,
    wy: f64,
    zk: [f64; 6],
}

impl MomentSums {
    /// First pass: mass and centroid.
    fn add_mass(&mut self, x: f64, y: f64, w: f64) {
        self.w += w;
        self.wx += w * x;
        self.wy += w * y;
    }

    fn centroid(&self) -> (f64, f64) {
        let w = self.w.max(1e-12);
        (self.wx / w, self.wy / w)
    }

    /// Second pass: the higher moments about `c`.
    fn add_moments(&mut self, x: f64, y: f64, w: f64, c: (f64, f64)) {
        let (re, im) = (x - c.0, y - c.1);
        let (mut pr, mut pi) = (re, im);
        for k in 0..3 {
            // (re + i im)^(k + 2)
            let (nr, ni) = (pr * re - pi * im, pr * im + pi * re);
            pr = nr;
            pi = ni;
            self.zk[2 * k] += w * pr;
            self.zk[2 * k + 1] += w * pi;
        }
    }

    fn signature(&self) -> [f32; 6] {
        let a = self.w.max(1e-12);
        let mut out = [0f32; 6];
        for k in 0..3 {
            let norm = a * a.powf((k as f64 + 2.0) / 2.0);
            out[2 * k] = (self.zk[2 * k] / norm) as f32;
            out[2 * k + 1] = (self.zk[2 * k + 1] / norm) as f32;
        }
        out
    }
}

/// The signature of an ideal `shape` (sampled on a fine grid: 400 px² at 0.1 px steps).
fn reference_signature(shape: Shape) -> [f32; 6] {
    let area = 400.0f32;
    let c = [0.0f32, 0.0];
    let (step, reach) = (0.1f64, 20.0f64);
    let n = (2.0 * reach / step) as usize;
    let pts = || {
        (0..n).flat_map(move |j| {
            (0..n).filter_map(move |i| {
                let (x, y) = (
                    -reach + (i as f64 + 0.5) * step,
                    -reach + (j as f64 + 0.5) * step,
                );
                inside(shape, area, c, x as f32, y as f32).then_some((x, y))
            })
        })
    };
    // Each sample stands for step² of area.
    let w = step * step;
    let mut m = MomentSums::default();
    for (x, y) in pts() {
        m.add_mass(x, y, w);
    }
    let cen = m.centroid();
    for (x, y) in pts() {
        m.add_moments(x, y, w, cen);
    }
    m.signature()
}

/// `domain.py::shape_mask`, parametrised by area instead of radius.
fn inside(shape: Shape, area: f32, c: [f32; 2], x: f32, y: f32) -> bool {
    let (dx, dy) = (x - c[0], y - c[1]);
    match shape {
        Shape::Circle => dx * dx + dy * dy <= area / std::f32::consts::PI,
        Shape::Square => {
            let h = area.sqrt() / 2.0;
            dx.abs() <= h && dy.abs() <= h
        }
        Shape::Diamond => dx.abs() + dy.abs() <= (area / 2.0).sqrt(),
        Shape::Triangle => {
            // Area 2h² for half-height h; the centroid is h/3 below the box centre.
            let h = (area / 2.0).sqrt();
            let t = (dy + h / 3.0 + h) / (2.0 * h);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * h
        }
    }
}

/// Soft coverage fades out for pixels whose distance from the background–object colour line
/// goes from `OFF_LINE_CUT − OFF_LINE_FADE` to `OFF_LINE_CUT` times the colour difference
/// (chroma bleed on clean edges stays below about 0.3).
const OFF_LINE_CUT: f32 = 0.75;
const OFF_LINE_FADE: f32 = 0.3;

/// The labelled position of a shape whose area centroid is `c`.
fn position_of(shape: Shape, area: f32, c: [f32; 2]) -> [f32; 2] {
    match shape {
        Shape::Triangle => [c[0], c[1] - (area / 2.0).sqrt() / 3.0],
        _ => c,
    }
}

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
mod tests {
    use super::*;
    use crate::quality::palette::tests::demo;

    /// A scene drawn like `domain.py::render_clip` (4x4 supersampled, anti-aliased).
    pub struct Scene {
        pub size: usize,
        pub background: [f32; 3],
        pub texture: Texture,
        pub phase: [f32; 2],
        /// (shape, rgb, radius, centre x, centre y); the centre is the labelled position.
        pub objects: Vec<(Shape, [f32; 3], f32, f32, f32)>,
    }

    fn covered(shape: Shape, r: f32, cx: f32, cy: f32, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - cx, y - cy);
        match shape {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= r * 0.88 && dy.abs() <= r * 0.88,
            Shape::Diamond => dx.abs() + dy.abs() <= r * 1.2,
            Shape::Triangle => {
                let h = r * 1.05;
                let t = (y - (cy - h)) / (2.0 * h);
                (0.0..=1.0).contains(&t) && dx.abs() <= t * h
            }
        }
    }

    impl Scene {
        pub fn render(&self) -> RgbFrame {
            let ss = 4;
            let mut f = RgbFrame::new(0, 0, 1, self.size as u32, self.size as u32);
            for py in 0..self.size {
                for px in 0..self.size {
                    let mut acc = [0f32; 3];
                    for sy in 0..ss {
                        for sx in 0..ss {
                            let x = px as f32 + (sx as f32 + 0.5) / ss as f32;
                            let y = py as f32 + (sy as f32 + 0.5) / ss as f32;
                            let mut c = self.background;
                            let cell = |v: f32| ((v / 4.0).floor() as i64).rem_euclid(2);
                            let s = match self.texture {
                                Texture::Plain => None,
                                Texture::Striped => Some(cell(x + self.phase[0])),
                                Texture::Checkered => {
                                    Some((cell(x + self.phase[0]) + cell(y + self.phase[1])) % 2)
                                }
                            };
                            if let Some(s) = s {
                                let sign = (s * 2 - 1) as f32;
                                c = c.map(|v| (v + 16.0 * sign).clamp(0.0, 255.0));
                            }
                            for &(shape, rgb, r, cx, cy) in &self.objects {
                                if covered(shape, r, cx, cy, x, y) {
                                    c = rgb;
                                }
                            }
                            for (a, v) in acc.iter_mut().zip(c) {
                                *a += v;
                            }
                        }
                    }
                    let i = (py * self.size + px) * 3;
                    for (d, a) in f.data[i..i + 3].iter_mut().zip(acc) {
                        *d = (a / (ss * ss) as f32).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            f
        }
    }

    fn rgb(p: &Palette, name: &str) -> [f32; 3] {
        p.object(name)
            .or_else(|| p.background(name))
            .unwrap()
            .rgb_f32()
    }

    #[test]
    fn every_shape_on_every_texture_is_found_where_it_was_drawn() {
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        let mut checked = 0;
        for (bi, bg) in ["gray", "white", "black", "beige"].into_iter().enumerate() {
            for (ti, texture) in Texture::ALL.into_iter().enumerate() {
                for (si, shape) in Shape::ALL.into_iter().enumerate() {
                    let colour = ["red", "green", "blue", "yellow", "purple"][(bi + ti + si) % 5];
                    // Small and large radii, off-grid centres.
                    let r = 6.5 + ((bi * 3 + ti + si) % 5) as f32;
                    let (cx, cy) = (20.3 + si as f32 * 3.7, 30.6 + ti as f32 * 2.1);
                    let other = (
                        Shape::ALL[(si + 1) % 4],
                        rgb(&p, ["blue", "red"][bi % 2]),
                        7.0,
                        48.2,
                        45.9,
                    );
                    let scene = Scene {
                        size: 64,
                        background: rgb(&p, bg),
                        texture,
                        phase: [1.3 * ti as f32, 2.7],
                        objects: vec![(shape, rgb(&p, colour), r, cx, cy), other],
                    };
                    let f = a.frame(&scene.render());
                    let what = format!("{colour} {shape} r={r} on {texture} {bg}: {f:#?}");
                    assert_eq!(f.background, bg, "{what}");
                    assert_eq!(f.texture, texture, "{what}");
                    assert_eq!(f.objects.len(), 2, "{what}");
                    let o = &f.objects[0];
                    assert_eq!(o.shape, shape, "{what}");
                    assert!(o.shape_fits, "{what}");
                    // The second object's colour may equal the first's: only check the first.
                    assert_eq!(o.colour, colour, "{what}");
                    let err = ((o.position[0] - cx).powi(2) + (o.position[1] - cy).powi(2)).sqrt();
                    assert!(err < 0.35, "position off by {err}: {what}");
                    assert_eq!(f.objects[1].shape, other.0, "{what}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 48);
    }

    #[test]
    fn fill_ratio_and_offset_tell_the_shapes_apart_on_large_shapes() {
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        let mut seen = Vec::new();
        for shape in Shape::ALL {
            let scene = Scene {
                size: 64,
                background: rgb(&p, "gray"),
                texture: Texture::Plain,
                phase: [0.0, 0.0],
                objects: vec![(shape, rgb(&p, "red"), 20.0, 32.0, 32.0)],
            };
            let f = a.frame(&scene.render());
            let o = &f.objects[0];
            seen.push((shape, o.fill, o.offset));
        }
        let get = |s: Shape| seen.iter().find(|x| x.0 == s).copied().unwrap();
        assert!((get(Shape::Circle).1 - 0.785).abs() < 0.05, "{seen:?}");
        assert!(get(Shape::Square).1 > 0.9, "{seen:?}");
        assert!((get(Shape::Diamond).1 - 0.5).abs() < 0.06, "{seen:?}");
        assert!(get(Shape::Diamond).2.abs() < 0.03, "{seen:?}");
        assert!(
            (get(Shape::Triangle).2 - 1.0 / 6.0).abs() < 0.03,
            "{seen:?}"
        );
    }

    #[test]
    fn specks_are_not_objects_and_an_empty_frame_has_none() {
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        let mut scene = Scene {
            size: 64,
            background: rgb(&p, "beige"),
            texture: Texture::Plain,
            phase: [0.0, 0.0],
            objects: vec![],
        };
        let f = a.frame(&scene.render());
        assert_eq!(
            (f.objects.len(), f.background.as_str(), f.texture),
            (0, "beige", Texture::Plain)
        );
        scene
            .objects
            .push((Shape::Square, rgb(&p, "blue"), 1.5, 10.0, 10.0));
        let f = a.frame(&scene.render());
        assert_eq!((f.objects.len(), f.specks), (0, 1));
    }

    #[test]
    fn a_clip_summary_follows_objects_and_takes_majorities() {
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        let frames: Vec<RgbFrame> = (0..6)
            .map(|i| {
                let mut objects = vec![
                    (
                        Shape::Circle,
                        rgb(&p, "green"),
                        8.0,
                        15.0 + 2.0 * i as f32,
                        20.0,
                    ),
                    (
                        Shape::Diamond,
                        rgb(&p, "yellow"),
                        7.0,
                        48.0 - 1.5 * i as f32,
                        44.0,
                    ),
                ];
                if i == 3 {
                    objects.pop(); // a frame where the second object vanished
                }
                Scene {
                    size: 64,
                    background: rgb(&p, "black"),
                    texture: if i == 5 {
                        Texture::Plain
                    } else {
                        Texture::Checkered
                    },
                    phase: [i as f32, 0.0],
                    objects,
                }
                .render()
            })
            .collect();
        let c = a.clip(&frames);
        let s = &c.summary;
        assert_eq!(
            (s.background.as_str(), s.texture, s.object_count),
            ("black", Texture::Checkered, 2)
        );
        assert_eq!(s.objects[0].shape, Some(Shape::Circle));
        assert_eq!(s.objects[1].colour, "yellow");
        assert!(s.objects[1].positions[3].is_none());
        let p5 = s.objects[1].positions[5].unwrap();
        assert!(
            (p5[0] - 40.5).abs() < 0.3 && (p5[1] - 44.0).abs() < 0.3,
            "{p5:?}"
        );
        // Deterministic: the same frames give the same analysis.
        assert_eq!(a.clip(&frames), c);
    }

    #[test]
    fn shapes_survive_blur() {
        // A 3x3 box blur rounds corners and softens edges more than 4:2:0 chroma does; the
        // moment signature is made not to care.
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        for (i, shape) in Shape::ALL.into_iter().enumerate() {
            let (cx, cy) = (24.4 + i as f32, 30.7);
            let sharp = Scene {
                size: 64,
                background: rgb(&p, "white"),
                texture: Texture::Plain,
                phase: [0.0, 0.0],
                objects: vec![(shape, rgb(&p, "purple"), 6.5, cx, cy)],
            }
            .render();
            let mut blurred = sharp.clone();
            for y in 1..63usize {
                for x in 1..63usize {
                    for c in 0..3 {
                        let mut sum = 0u32;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                sum += sharp.data[((y + dy - 1) * 64 + x + dx - 1) * 3 + c] as u32;
                            }
                        }
                        blurred.data[(y * 64 + x) * 3 + c] = ((sum + 4) / 9) as u8;
                    }
                }
            }
            let f = a.frame(&blurred);
            assert_eq!(f.objects.len(), 1, "{shape}: {f:#?}");
            let o = &f.objects[0];
            assert_eq!(o.shape, shape, "{f:#?}");
            assert!(o.shape_fits, "{f:#?}");
            let err = ((o.position[0] - cx).powi(2) + (o.position[1] - cy).powi(2)).sqrt();
            assert!(err < 0.3, "{shape}: position off by {err}");
        }
    }

    #[test]
    fn noise_is_not_a_texture() {
        let p = demo();
        let a = Analyser::new(p.clone(), AnalyserConfig::default());
        let mut f = Scene {
            size: 64,
            background: rgb(&p, "gray"),
            texture: Texture::Plain,
            phase: [0.0, 0.0],
            objects: vec![],
        }
        .render();
        // A fixed pseudo-random grey offset of up to ±14 per pixel (xorshift).
        let mut state = 0x2545_f491u32;
        for px in f.data.chunks_exact_mut(3) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let d = (state % 29) as i32 - 14;
            for v in px {
                *v = (*v as i32 + d).clamp(0, 255) as u8;
            }
        }
        let out = a.frame(&f);
        assert!(out.texture_std > 5.0, "{out:?}");
        assert_eq!(out.texture, Texture::Plain, "{out:?}");
        assert!(out.texture_periodicity > -0.2, "{out:?}");
    }

    #[test]
    fn matching_is_greedy_by_distance() {
        let m = match_nearest(
            &[[0.0, 0.0], [10.0, 0.0]],
            &[[9.0, 0.0], [1.0, 0.0], [50.0, 50.0]],
        );
        assert_eq!(
            m.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
            vec![(0, 1), (1, 0)]
        );
    }
}
