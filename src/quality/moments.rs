//! Shapes read from pixels: a signature of complex moments that blur does not change, the
//! signatures of the palette's ideal shapes, and where a shape's label puts it.

use super::palette::Shape;

/// Shape signature: the complex central moments E[(z − z̄)^k] of a mass distribution over
/// the plane (z = x + iy), k = 2, 3, 4, each divided by area^(k/2) so size does not matter,
/// as [Re m2, Im m2, Re m3, Im m3, Re m4, Im m4]. Blurring with a rotation-symmetric kernel
/// adds a variable whose complex moments are all zero, so these stay as they were: the
/// signature survives anti-aliasing, 4:2:0 chroma and a decoder's softness, which move a
/// 12 px square's bounding-box fill ratio by 15 %. Circle: all 0; square and diamond: Re m4
/// = ∓1/60; the triangle is elongated (m2) and lopsided (m3).
#[derive(Default)]
pub(super) struct MomentSums {
    /// Σw, Σw·x, Σw·y, and Σw·(z − c)^k for k = 2, 3, 4 (real, imaginary).
    pub(super) w: f64,
    wx: f64,
    wy: f64,
    zk: [f64; 6],
}

impl MomentSums {
    /// First pass: mass and centroid.
    pub(super) fn add_mass(&mut self, x: f64, y: f64, w: f64) {
        self.w += w;
        self.wx += w * x;
        self.wy += w * y;
    }

    pub(super) fn centroid(&self) -> (f64, f64) {
        let w = self.w.max(1e-12);
        (self.wx / w, self.wy / w)
    }

    /// Second pass: the higher moments about `c`.
    pub(super) fn add_moments(&mut self, x: f64, y: f64, w: f64, c: (f64, f64)) {
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

    pub(super) fn signature(&self) -> [f32; 6] {
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
pub(super) fn reference_signature(shape: Shape) -> [f32; 6] {
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
pub(super) fn inside(shape: Shape, area: f32, c: [f32; 2], x: f32, y: f32) -> bool {
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

/// The labelled position of a shape whose area centroid is `c`.
pub(super) fn position_of(shape: Shape, area: f32, c: [f32; 2]) -> [f32; 2] {
    match shape {
        Shape::Triangle => [c[0], c[1] - (area / 2.0).sqrt() / 3.0],
        _ => c,
    }
}
