//! Still images: one RGB24 picture encoded as PNG with FFmpeg's own encoder (no extra crate;
//! a PNG packet from FFmpeg is a complete file), and short looping animations as APNG (the
//! batch report's previews: every browser shows them as an `<img>`), written atomically.

use std::path::Path;

use ffmpeg_next::{self as ffmpeg, codec, format, frame};

use super::error::{MediaError, Result};
use super::frame::RgbFrame;

/// `f` as the bytes of a PNG file.
///
/// # Errors
/// `Encode` when this FFmpeg build has no PNG encoder or it refuses the picture.
pub fn png_bytes(f: &RgbFrame, name: &Path) -> Result<Vec<u8>> {
    super::init();
    let err = |cause: String| MediaError::Encode {
        path: name.to_path_buf(),
        cause,
    };
    let png = ffmpeg::encoder::find(codec::Id::PNG)
        .ok_or_else(|| err("this FFmpeg build has no PNG encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(png)
        .encoder()
        .video()
        .map_err(|e| err(e.to_string()))?;
    enc.set_width(f.width);
    enc.set_height(f.height);
    enc.set_format(format::Pixel::RGB24);
    enc.set_time_base((1, 1));
    let mut enc = enc
        .open_as(png)
        .map_err(|e| err(format!("cannot open the PNG encoder: {e}")))?;
    let mut pic = frame::Video::new(format::Pixel::RGB24, f.width, f.height);
    let row = f.width as usize * 3;
    let stride = pic.stride(0);
    let data = pic.data_mut(0);
    for y in 0..f.height as usize {
        data[y * stride..y * stride + row].copy_from_slice(&f.data[y * row..(y + 1) * row]);
    }
    pic.set_pts(Some(0));
    enc.send_frame(&pic)
        .map_err(|e| err(format!("the PNG encoder refused the picture: {e}")))?;
    enc.send_eof().map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let mut packet = ffmpeg::Packet::empty();
    while enc.receive_packet(&mut packet).is_ok() {
        out.extend_from_slice(packet.data().unwrap_or(&[]));
    }
    if out.is_empty() {
        return Err(err("the PNG encoder produced nothing".into()));
    }
    Ok(out)
}

/// Writes `f` to `path` as PNG (complete or not at all).
///
/// # Errors
/// `Encode` (see [`png_bytes`]) or `Unwritable`.
pub fn write_png(path: &Path, f: &RgbFrame) -> Result<()> {
    let bytes = png_bytes(f, path)?;
    crate::atomic::write_atomic(path, &bytes).map_err(|e| MediaError::Unwritable {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })
}

/// Writes `frames` (all one size) to `path` as an animated PNG looping forever at `fps`.
///
/// # Errors
/// `Encode` when this FFmpeg build has no APNG encoder or muxer, or `Unwritable`.
pub fn write_apng(path: &Path, frames: &[RgbFrame], fps: u32) -> Result<()> {
    super::init();
    let err = |cause: String| MediaError::Encode {
        path: path.to_path_buf(),
        cause,
    };
    let first = frames
        .first()
        .ok_or_else(|| err("no frames to animate".into()))?;
    let (w, h) = (first.width, first.height);
    if frames.iter().any(|f| (f.width, f.height) != (w, h)) {
        return Err(err("frames of different sizes".into()));
    }
    let codec = ffmpeg::encoder::find(codec::Id::APNG)
        .ok_or_else(|| err("this FFmpeg build has no APNG encoder".into()))?;
    let temp = crate::atomic::TempOutput::new(path).map_err(|e| MediaError::Unwritable {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    let mut octx = format::output_as(temp.temp_path(), "apng")
        .map_err(|e| err(format!("no APNG muxer: {e}")))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| err(e.to_string()))?;
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(format::Pixel::RGB24);
    let tb = ffmpeg::Rational::new(1, fps.max(1) as i32);
    enc.set_time_base(tb);
    enc.set_frame_rate(Some(ffmpeg::Rational::new(fps.max(1) as i32, 1)));
    let mut enc = enc
        .open_as(codec)
        .map_err(|e| err(format!("cannot open the APNG encoder: {e}")))?;
    let mut ost = octx
        .add_stream(codec)
        .map_err(|e| err(format!("cannot add the stream: {e}")))?;
    ost.set_parameters(&enc);
    ost.set_time_base(tb);
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("plays", "0"); // loop forever
    octx.write_header_with(opts)
        .map_err(|e| err(format!("cannot write the header: {e}")))?;
    let ost_tb = octx.stream(0).map(|s| s.time_base()).unwrap_or(tb);
    let mut packet = ffmpeg::Packet::empty();
    let mut drain =
        |enc: &mut ffmpeg::encoder::Video, octx: &mut format::context::Output| -> Result<()> {
            while enc.receive_packet(&mut packet).is_ok() {
                packet.set_stream(0);
                packet.rescale_ts(tb, ost_tb);
                packet
                    .write_interleaved(octx)
                    .map_err(|e| err(format!("cannot write a frame: {e}")))?;
            }
            Ok(())
        };
    for (i, f) in frames.iter().enumerate() {
        let mut pic = frame::Video::new(format::Pixel::RGB24, w, h);
        let row = w as usize * 3;
        let stride = pic.stride(0);
        let data = pic.data_mut(0);
        for y in 0..h as usize {
            data[y * stride..y * stride + row].copy_from_slice(&f.data[y * row..(y + 1) * row]);
        }
        pic.set_pts(Some(i as i64));
        enc.send_frame(&pic)
            .map_err(|e| err(format!("the APNG encoder refused a frame: {e}")))?;
        drain(&mut enc, &mut octx)?;
    }
    enc.send_eof().map_err(|e| err(e.to_string()))?;
    drain(&mut enc, &mut octx)?;
    octx.write_trailer()
        .map_err(|e| err(format!("cannot finish the file: {e}")))?;
    drop(octx);
    temp.commit().map_err(|e| MediaError::Unwritable {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_round_trips_through_the_decoder() {
        let mut f = RgbFrame::new(0, 0, 1, 5, 3);
        for (i, v) in f.data.iter_mut().enumerate() {
            *v = (i * 17 % 256) as u8;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        write_png(&path, &f).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let back: Vec<RgbFrame> =
            crate::media::VideoSource::open(&crate::media::InputSpec::File(path))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
        assert_eq!((back[0].width, back[0].height), (5, 3));
        assert_eq!(back[0].data, f.data, "PNG is lossless");
    }

    #[test]
    fn an_apng_has_every_frame_and_loops() {
        let frames: Vec<RgbFrame> = (0..5)
            .map(|i| {
                let mut f = RgbFrame::new(i, i as i64, 1, 6, 4);
                f.data.iter_mut().for_each(|v| *v = (i * 40) as u8);
                f
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        write_apng(&path, &frames, 4).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let actl = bytes
            .windows(4)
            .position(|w| w == b"acTL")
            .expect("animation control");
        let n = u32::from_be_bytes(bytes[actl + 4..actl + 8].try_into().unwrap());
        let plays = u32::from_be_bytes(bytes[actl + 8..actl + 12].try_into().unwrap());
        assert_eq!((n, plays), (5, 0));
        assert!(write_apng(&path, &[], 4).is_err());
    }
}
