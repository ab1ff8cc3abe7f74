//! Still images: one RGB24 picture encoded as PNG with FFmpeg's own encoder (no extra crate;
//! a PNG packet from FFmpeg is a complete file), written atomically.

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
}
