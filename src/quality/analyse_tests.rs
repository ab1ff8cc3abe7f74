//! Tests of the analyser (a child module of `analyse`, kept in its own file).
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
