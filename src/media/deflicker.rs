//! Temporal smoothing of an edited video on its way to the encoder: FFmpeg's `hqdn3d` with
//! only its temporal part on. Each pixel is low-passed against its own filtered past in
//! proportion to how little it changed: a diffusion edit's frame-to-frame shimmer (a few
//! levels) is averaged away, motion and cuts (tens of levels) pass almost untouched. It is
//! recursive, so it carries across the pipeline's temporal windows and smooths their seams
//! too, and it emits each frame as it takes it in (no delay, nothing to flush).

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{ffi, filter, format, frame};

/// `hqdn3d` treats a spatial strength of 0 as "use the default" (4); this is as good as off:
/// its weight for any change of one level or more is below 1e-30.
const SPATIAL_OFF: f64 = 1e-4;

/// The largest strength taken. At 255 a pixel changing by its whole range still keeps a
/// quarter of its past; past that the filter only smears.
pub const MAX_STRENGTH: f32 = 255.0;

pub struct Deflicker {
    graph: filter::Graph,
    out: frame::Video,
}

impl Deflicker {
    /// A filter for frames of `pix` at `width` x `height`. `strength` is `hqdn3d`'s temporal
    /// strength, for luma and chroma alike: the change (0–255) at which a pixel still keeps
    /// a quarter of its past (6 is `hqdn3d`'s default).
    pub fn new(
        pix: format::Pixel,
        width: u32,
        height: u32,
        strength: f32,
    ) -> Result<Deflicker, ffmpeg::Error> {
        let mut graph = filter::Graph::new();
        let pix_id: ffi::AVPixelFormat = pix.into();
        let args = format!(
            "video_size={width}x{height}:pix_fmt={}:time_base=1/1:pixel_aspect=1/1",
            pix_id as i32
        );
        let buffer = filter::find("buffer").ok_or(ffmpeg::Error::FilterNotFound)?;
        let sink = filter::find("buffersink").ok_or(ffmpeg::Error::FilterNotFound)?;
        graph.add(&buffer, "in", &args)?;
        graph.add(&sink, "out", "")?;
        // Frames leave in the format they came in (a format the filter lacks is converted
        // there and back rather than reaching the encoder changed).
        graph
            .get("out")
            .ok_or(ffmpeg::Error::Bug)?
            .set_pixel_format(pix);
        let s = f64::from(strength.clamp(0.0, MAX_STRENGTH));
        graph
            .output("in", 0)?
            .input("out", 0)?
            .parse(&format!("hqdn3d={SPATIAL_OFF}:{SPATIAL_OFF}:{s}:{s}"))?;
        graph.validate()?;
        Ok(Deflicker {
            graph,
            out: frame::Video::empty(),
        })
    }

    /// Filters the next frame (in presentation order). The input is left as it was; the
    /// filtered frame, with the input's timestamp, lives until the next call.
    pub fn run(&mut self, input: &frame::Video) -> Result<&frame::Video, ffmpeg::Error> {
        let mut src = self.graph.get("in").ok_or(ffmpeg::Error::Bug)?;
        // av_buffersrc_write_frame takes a new reference and leaves the caller's frame
        // alone (`Source::add` would take its buffers away), so the writer's conversion
        // target is reused as before.
        let rc = unsafe { ffi::av_buffersrc_write_frame(src.as_mut_ptr(), input.as_ptr()) };
        if rc < 0 {
            return Err(ffmpeg::Error::from(rc));
        }
        self.graph
            .get("out")
            .ok_or(ffmpeg::Error::Bug)?
            .sink()
            .frame(&mut self.out)?;
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gray frame of `level` with one bright square at `x`.
    fn frame_with(level: u8, x: usize) -> frame::Video {
        let mut f = frame::Video::new(format::Pixel::YUV420P, 32, 32);
        for p in 0..3 {
            let v = if p == 0 { level } else { 128 };
            let stride = f.stride(p);
            let h = if p == 0 { 32 } else { 16 };
            f.data_mut(p)[..stride * h].fill(v);
        }
        let stride = f.stride(0);
        for y in 8..16 {
            f.data_mut(0)[y * stride + x..y * stride + x + 8].fill(235);
        }
        f
    }

    fn luma(f: &frame::Video, x: usize, y: usize) -> u8 {
        f.data(0)[y * f.stride(0) + x]
    }

    #[test]
    fn small_changes_are_smoothed_and_large_ones_pass() {
        crate::media::init();
        let mut d = Deflicker::new(format::Pixel::YUV420P, 32, 32, 12.0).unwrap();
        // The background shimmers between 100 and 104 while the square moves by 8 px.
        let mut background = Vec::new();
        for (i, level) in [100u8, 104, 100, 104, 100, 104].into_iter().enumerate() {
            let mut input = frame_with(level, if i % 2 == 0 { 0 } else { 16 });
            input.set_pts(Some(i as i64));
            let out = d.run(&input).unwrap();
            assert_eq!(out.pts(), Some(i as i64));
            assert_eq!((out.width(), out.height()), (32, 32));
            assert_eq!(out.format(), format::Pixel::YUV420P);
            background.push(luma(out, 4, 28));
            // The square is where this frame puts it, at full brightness or nearly.
            let (on, off) = if i % 2 == 0 { (4, 20) } else { (20, 4) };
            assert!(luma(out, on, 12) > 200, "frame {i}: {}", luma(out, on, 12));
            assert!(
                luma(out, off, 12) < 140,
                "frame {i}: {}",
                luma(out, off, 12)
            );
            // The caller's frame is untouched.
            assert_eq!(luma(&input, 4, 28), level);
        }
        // The 4-level flicker shrinks once the filter has a past.
        let swing = |v: &[u8]| v.windows(2).map(|w| w[0].abs_diff(w[1])).max().unwrap_or(0);
        assert!(swing(&background[2..]) < 3, "{background:?}");
    }

    #[test]
    fn strength_zero_changes_nothing() {
        crate::media::init();
        let mut d = Deflicker::new(format::Pixel::YUV420P, 32, 32, 0.0).unwrap();
        for (i, level) in [100u8, 104, 100].into_iter().enumerate() {
            let mut input = frame_with(level, 0);
            input.set_pts(Some(i as i64));
            let out = d.run(&input).unwrap();
            assert_eq!(luma(out, 4, 28), level);
        }
    }

    /// The same frames give the same output, byte for byte, however often they are filtered.
    #[test]
    fn the_same_frames_come_out_the_same() {
        crate::media::init();
        // 64x64 4:2:0: planes of 64 and 32 pixels a side.
        let side = |p: usize| if p == 0 { 64 } else { 32 };
        let run = || {
            let mut d = Deflicker::new(format::Pixel::YUV420P, 64, 64, 12.0).unwrap();
            let mut outs = Vec::new();
            let mut input = frame::Video::new(format::Pixel::YUV420P, 64, 64);
            for i in 0..32u32 {
                for p in 0..3 {
                    let (stride, n) = (input.stride(p), side(p));
                    let data = input.data_mut(p);
                    for y in 0..n {
                        for x in 0..n {
                            data[y * stride + x] =
                                ((x as u32 * 7 + y as u32 * 3 + i * 5 + p as u32 * 11) % 31 + 100)
                                    as u8;
                        }
                    }
                }
                input.set_pts(Some(i64::from(i)));
                let out = d.run(&input).unwrap();
                let mut bytes = Vec::new();
                for p in 0..3 {
                    let (stride, n) = (out.stride(p), side(p));
                    for y in 0..n {
                        bytes.extend_from_slice(&out.data(p)[y * stride..y * stride + n]);
                    }
                }
                outs.push(bytes);
            }
            outs
        };
        let first = run();
        for _ in 0..20 {
            assert!(
                run() == first,
                "the deflicker's output changed between runs"
            );
        }
    }
}
