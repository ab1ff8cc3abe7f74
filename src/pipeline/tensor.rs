//! Frames ↔ tensors: RGB24 frames to `[N, 3, H, W]` in [-1, 1] for the VAE encoder, and the
//! decoder's output back to RGB24; VAE latents `[N, C, h, w]` ↔ the UNet's `[1, C, F, h, w]`.

use ndarray::{Array4, Array5, ArrayView5, ArrayViewD, Axis, Ix4};

use crate::diffusion::pool;
use crate::media::RgbFrame;

/// Frames (all the same size) as `[N, 3, H, W]` in [-1, 1].
pub fn frames_to_tensor(frames: &[RgbFrame]) -> Array4<f32> {
    let (w, h) = (frames[0].width as usize, frames[0].height as usize);
    // Every element is written below; the buffer may be a past window's (`pool::give` it).
    let mut t = Array4::from_shape_vec(
        (frames.len(), 3, h, w),
        pool::storage(frames.len() * 3 * h * w),
    )
    .expect("storage(n) holds n elements");
    for (mut planes, f) in t.outer_iter_mut().zip(frames) {
        // One channel plane at a time, walking the packed pixels in order: no index arithmetic
        // or bounds check per sample.
        for (c, mut plane) in planes.outer_iter_mut().enumerate() {
            let px = f.data[c..].iter().step_by(3);
            for (dst, &v) in plane.iter_mut().zip(px) {
                *dst = v as f32 / 127.5 - 1.0;
            }
        }
    }
    t
}

/// `[N, 3, H, W]` in about [-1, 1] back to RGB24 frames (clamped, rounded), taking index,
/// timestamps from `like`.
pub fn tensor_to_frames(
    t: ArrayViewD<'_, f32>,
    like: &[RgbFrame],
) -> Result<Vec<RgbFrame>, String> {
    let t = t
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
        .zip(t.outer_iter())
        .map(|(src, planes)| {
            let mut f = RgbFrame::new(src.index, src.pts, src.duration, w as u32, h as u32);
            for (ch, plane) in planes.outer_iter().enumerate() {
                let px = f.data[ch..].iter_mut().step_by(3);
                for (dst, &v) in px.zip(plane.iter()) {
                    *dst = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                }
            }
            f
        })
        .collect())
}

/// VAE latents `[F, C, h, w]` (frames in the batch axis), times `scale`, as the UNet's
/// `[1, C, F, h, w]`.
pub fn to_video_latent(l: ArrayViewD<'_, f32>, scale: f32) -> Result<Array5<f32>, String> {
    let l = l
        .into_dimensionality::<Ix4>()
        .map_err(|e| format!("encoder output must be [F, C, h, w]: {e}"))?;
    let (f, c, h, w) = l.dim();
    // Every element is written below; the buffer may be a dropped window's.
    let mut v = Array5::from_shape_vec((1, c, f, h, w), pool::storage(c * f * h * w))
        .map_err(|e| e.to_string())?;
    for fi in 0..f {
        v.index_axis_mut(Axis(0), 0)
            .index_axis_mut(Axis(1), fi)
            .zip_mut_with(&l.index_axis(Axis(0), fi), |d, &s| *d = s * scale);
    }
    Ok(v)
}

/// `[1, C, F, h, w]` back to `[F, C, h, w]` for the VAE decoder.
pub fn to_frame_latents(v: ArrayView5<'_, f32>) -> Array4<f32> {
    let (_, c, f, h, w) = v.dim();
    // Every element is written below; the buffer may be a past window's (`pool::give` it).
    let mut l = Array4::from_shape_vec((f, c, h, w), pool::storage(f * c * h * w))
        .expect("storage(n) holds n elements");
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
        let back = tensor_to_frames(t.into_dyn().view(), std::slice::from_ref(&f)).unwrap();
        assert_eq!(back[0], f);
    }

    #[test]
    fn latent_layouts_are_inverse() {
        let l = Array4::from_shape_fn((3, 4, 2, 2), |(f, c, y, x)| {
            (f * 100 + c * 10 + y * 2 + x) as f32
        });
        let v = to_video_latent(l.view().into_dyn(), 1.0).unwrap();
        assert_eq!(v.dim(), (1, 4, 3, 2, 2));
        assert_eq!(v[[0, 2, 1, 0, 1]], l[[1, 2, 0, 1]]);
        assert_eq!(to_frame_latents(v.view()), l);
    }
}
