//! Frames ↔ tensors: RGB24 frames to `[N, 3, H, W]` in [-1, 1] for the VAE encoder, and the
//! decoder's output back to RGB24; VAE latents `[N, C, h, w]` ↔ the UNet's `[1, C, F, h, w]`.

use ndarray::{Array4, Array5, ArrayD, Axis, Ix4};

use crate::media::RgbFrame;

/// Frames (all the same size) as `[N, 3, H, W]` in [-1, 1].
pub fn frames_to_tensor(frames: &[RgbFrame]) -> Array4<f32> {
    let (w, h) = (frames[0].width as usize, frames[0].height as usize);
    let mut t = Array4::<f32>::zeros((frames.len(), 3, h, w));
    for (n, f) in frames.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + x) * 3;
                for c in 0..3 {
                    t[[n, c, y, x]] = f.data[p + c] as f32 / 127.5 - 1.0;
                }
            }
        }
    }
    t
}

/// `[N, 3, H, W]` in about [-1, 1] back to RGB24 frames (clamped, rounded), taking index,
/// timestamps from `like`.
pub fn tensor_to_frames(t: &ArrayD<f32>, like: &[RgbFrame]) -> Result<Vec<RgbFrame>, String> {
    let t = t
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|e| format!("decoder output must be [N, 3, H, W]: {e}"))?;
    let (n, c, h, w) = t.dim();
    if n != like.len() || c != 3 {
        return Err(format!(
            "decoder gave [{n}, {c}, {h}, {w}] for {} frames",
            like.len()
        ));
    }
    Ok(like
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let mut f = RgbFrame::new(src.index, src.pts, src.duration, w as u32, h as u32);
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..3 {
                        let v = (t[[i, ch, y, x]] + 1.0) * 127.5;
                        f.data[(y * w + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            f
        })
        .collect())
}

/// VAE latents `[F, C, h, w]` (frames in the batch axis) as the UNet's `[1, C, F, h, w]`.
pub fn to_video_latent(l: &Array4<f32>) -> Array5<f32> {
    let (f, c, h, w) = l.dim();
    let mut v = Array5::<f32>::zeros((1, c, f, h, w));
    for fi in 0..f {
        v.index_axis_mut(Axis(0), 0)
            .index_axis_mut(Axis(1), fi)
            .assign(&l.index_axis(Axis(0), fi));
    }
    v
}

/// `[1, C, F, h, w]` back to `[F, C, h, w]` for the VAE decoder.
pub fn to_frame_latents(v: &Array5<f32>) -> Array4<f32> {
    let (_, c, f, h, w) = v.dim();
    let mut l = Array4::<f32>::zeros((f, c, h, w));
    for fi in 0..f {
        l.index_axis_mut(Axis(0), fi)
            .assign(&v.index_axis(Axis(0), 0).index_axis(Axis(1), fi));
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_tensors() {
        let mut f = RgbFrame::new(4, 40, 1, 3, 2);
        for (i, b) in f.data.iter_mut().enumerate() {
            *b = (i * 13 % 256) as u8;
        }
        let t = frames_to_tensor(std::slice::from_ref(&f));
        assert_eq!(t.dim(), (1, 3, 2, 3));
        assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
        let back = tensor_to_frames(&t.into_dyn(), std::slice::from_ref(&f)).unwrap();
        assert_eq!(back[0], f);
    }

    #[test]
    fn latent_layouts_are_inverse() {
        let l = Array4::from_shape_fn((3, 4, 2, 2), |(f, c, y, x)| {
            (f * 100 + c * 10 + y * 2 + x) as f32
        });
        let v = to_video_latent(&l);
        assert_eq!(v.dim(), (1, 4, 3, 2, 2));
        assert_eq!(v[[0, 2, 1, 0, 1]], l[[1, 2, 0, 1]]);
        assert_eq!(to_frame_latents(&v), l);
    }
}
