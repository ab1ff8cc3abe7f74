//! `ctxd probe`: what a media file holds, as JSON. Header facts come from the container; the
//! exact frame count and the variable-frame-rate flag come from a scan of the video packets
//! (demuxing only, no decoding), which `fast` skips.

use std::collections::BTreeMap;

use ffmpeg_next::{self as ffmpeg, ffi, format, media, Rational as AvRational};
use serde::Serialize;

use super::error::{MediaError, Result};
use super::input::{self, InputSpec};

/// A rational number as FFmpeg keeps it (frame rates, time bases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rational {
    pub num: i32,
    pub den: i32,
}

impl Rational {
    pub fn value(self) -> Option<f64> {
        (self.den != 0 && self.num != 0).then(|| self.num as f64 / self.den as f64)
    }
}

impl From<AvRational> for Rational {
    fn from(r: AvRational) -> Self {
        Rational {
            num: r.numerator(),
            den: r.denominator(),
        }
    }
}

impl From<Rational> for AvRational {
    fn from(r: Rational) -> Self {
        AvRational::new(r.num, r.den)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub input: String,
    /// FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm".
    pub container: String,
    pub container_long_name: String,
    /// Seconds; the longest stream.
    pub duration: Option<f64>,
    pub start_time: Option<f64>,
    pub bit_rate: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    pub video: VideoInfo,
    pub audio: Vec<AudioInfo>,
    /// Subtitle, data and attachment streams: ctxd does not carry them into its outputs.
    pub other_streams: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoInfo {
    pub index: usize,
    pub codec: String,
    pub profile: Option<String>,
    pub coded_width: u32,
    pub coded_height: u32,
    /// Size after rotation and sample aspect ratio: what a player shows and what ctxd outputs
    /// (ctxd keeps non-square pixels as such, so this is the stored size, rotated).
    pub display_width: u32,
    pub display_height: u32,
    pub sample_aspect_ratio: Option<Rational>,
    pub pix_fmt: String,
    pub bit_depth: u8,
    /// Average frame rate (`avg_frame_rate`), falling back to the base rate.
    pub frame_rate: Rational,
    pub fps: Option<f64>,
    /// FFmpeg's "real base frame rate" (`r_frame_rate`).
    pub r_frame_rate: Rational,
    pub time_base: Rational,
    pub duration: Option<f64>,
    /// Frames in the stream: exact after a scan, else the container's count if it has one.
    pub frame_count: Option<u64>,
    pub frame_count_exact: bool,
    /// Variable frame rate: frame durations differ. From the scan, or guessed from the
    /// header when the scan was skipped.
    pub vfr: bool,
    /// Clockwise rotation a player applies (0, 90, 180, 270); ctxd applies it on decode.
    pub rotation: u32,
    pub color_space: Option<String>,
    pub color_range: Option<String>,
    pub language: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioInfo {
    pub index: usize,
    pub codec: String,
    pub channels: u16,
    pub channel_layout: Option<String>,
    pub sample_rate: u32,
    pub bit_rate: Option<i64>,
    pub language: Option<String>,
    pub duration: Option<f64>,
}

/// Probes an input. With `fast`, only the header is read (no packet scan).
///
/// # Errors
/// Whatever opening the input gives, plus `NoVideo` and read errors during the scan.
pub fn probe(spec: &InputSpec, fast: bool) -> Result<Probe> {
    let mut ictx = input::open(spec)?;
    let mut probe = describe(spec, &ictx)?;
    if !fast {
        let scan = scan_video_packets(&mut ictx, probe.video.index, spec)?;
        probe.video.frame_count = Some(scan.frames);
        probe.video.frame_count_exact = true;
        probe.video.vfr = scan.vfr;
    }
    Ok(probe)
}

/// The header facts of an opened input.
pub(crate) fn describe(spec: &InputSpec, ictx: &format::context::Input) -> Result<Probe> {
    let name = spec.to_string();
    let video_stream = best_video_stream(ictx, &name)?;
    let video = video_info(&video_stream);
    let mut audio = Vec::new();
    let mut other = Vec::new();
    for st in ictx.streams() {
        let par = st.parameters();
        match par.medium() {
            media::Type::Video if st.index() == video.index => {}
            media::Type::Audio => audio.push(audio_info(&st)),
            m => other.push(format!("#{} {:?} {}", st.index(), m, codec_name(par.id()))),
        }
    }
    let fmt = ictx.format();
    let duration = (ictx.duration() > 0).then(|| ictx.duration() as f64 / ffi::AV_TIME_BASE as f64);
    let start = unsafe { (*ictx.as_ptr()).start_time };
    Ok(Probe {
        input: name,
        container: fmt.name().to_string(),
        container_long_name: fmt.description().to_string(),
        duration,
        start_time: (start != ffi::AV_NOPTS_VALUE).then(|| start as f64 / ffi::AV_TIME_BASE as f64),
        bit_rate: (ictx.bit_rate() > 0).then(|| ictx.bit_rate()),
        metadata: ictx
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        video,
        audio,
        other_streams: other,
    })
}

/// The video stream ctxd edits: FFmpeg's pick, skipping cover art (attached pictures).
pub(crate) fn best_video_stream<'a>(
    ictx: &'a format::context::Input,
    name: &str,
) -> Result<format::stream::Stream<'a>> {
    let is_cover = |st: &format::stream::Stream| {
        st.disposition()
            .contains(format::stream::Disposition::ATTACHED_PIC)
    };
    if let Some(st) = ictx.streams().best(media::Type::Video) {
        if !is_cover(&st) {
            return Ok(st);
        }
    }
    if let Some(st) = ictx
        .streams()
        .find(|st| st.parameters().medium() == media::Type::Video && !is_cover(st))
    {
        return Ok(st);
    }
    let found: Vec<String> = ictx
        .streams()
        .map(|st| {
            format!(
                "{:?} {}",
                st.parameters().medium(),
                codec_name(st.parameters().id())
            )
            .to_lowercase()
        })
        .collect();
    Err(MediaError::NoVideo {
        path: name.to_string(),
        found: if found.is_empty() {
            "no streams".into()
        } else {
            found.join(", ")
        },
    })
}

pub(crate) fn codec_name(id: ffmpeg::codec::Id) -> String {
    unsafe {
        let p = ffi::avcodec_get_name(id.into());
        if p.is_null() {
            "unknown".into()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Clockwise degrees a player rotates this stream by, from its display matrix (0/90/180/270).
pub(crate) fn rotation(st: &format::stream::Stream) -> u32 {
    unsafe {
        let mut size = 0usize;
        let data = ffi::av_stream_get_side_data(
            st.as_ptr(),
            ffi::AVPacketSideDataType::AV_PKT_DATA_DISPLAYMATRIX,
            &mut size,
        );
        if data.is_null() || size < 9 * 4 {
            return 0;
        }
        // av_display_rotation_get is counter-clockwise; players rotate by its negation.
        let ccw = ffi::av_display_rotation_get(data as *const i32);
        if ccw.is_nan() {
            return 0;
        }
        let cw = (-ccw).rem_euclid(360.0);
        let snapped = ((cw / 90.0).round() as u32 % 4) * 90;
        if (cw - snapped as f64).abs() > 1.0 && (cw - 360.0).abs() > 1.0 {
            tracing::warn!(
                "stream #{} has a {cw:.0}° rotation; only multiples of 90° are applied, using {snapped}°",
                st.index()
            );
        }
        snapped
    }
}

fn tb_seconds(ts: i64, tb: AvRational) -> Option<f64> {
    (ts != ffi::AV_NOPTS_VALUE && ts > 0 && tb.denominator() != 0)
        .then(|| ts as f64 * tb.numerator() as f64 / tb.denominator() as f64)
}

fn language(st: &format::stream::Stream) -> Option<String> {
    st.metadata().get("language").map(str::to_string)
}

fn video_info(st: &format::stream::Stream) -> VideoInfo {
    let par = st.parameters();
    let (w, h, fmt, sar, profile, cs, cr) = unsafe {
        let p = &*par.as_ptr();
        let fmt: format::Pixel = std::mem::transmute::<i32, ffi::AVPixelFormat>(p.format).into();
        let profile = ffi::avcodec_profile_name(p.codec_id, p.profile);
        let profile = (!profile.is_null()).then(|| {
            std::ffi::CStr::from_ptr(profile)
                .to_string_lossy()
                .into_owned()
        });
        (
            p.width as u32,
            p.height as u32,
            fmt,
            AvRational::from(p.sample_aspect_ratio),
            profile,
            ffmpeg::color::Space::from(p.color_space),
            ffmpeg::color::Range::from(p.color_range),
        )
    };
    let rotation = rotation(st);
    let (dw, dh) = if rotation % 180 == 90 { (h, w) } else { (w, h) };
    let avg = st.avg_frame_rate();
    let r = st.rate();
    let frame_rate = if avg.numerator() > 0 && avg.denominator() > 0 {
        avg
    } else {
        r
    };
    let tb = st.time_base();
    let frames = st.frames();
    let depth = fmt
        .descriptor()
        .map(|d| unsafe { (*d.as_ptr()).comp[0].depth as u8 })
        .unwrap_or(8);
    VideoInfo {
        index: st.index(),
        codec: codec_name(par.id()),
        profile,
        coded_width: w,
        coded_height: h,
        display_width: dw,
        display_height: dh,
        sample_aspect_ratio: (sar.numerator() > 0 && sar != AvRational::new(1, 1))
            .then(|| sar.into()),
        pix_fmt: fmt
            .descriptor()
            .map(|d| d.name().to_string())
            .unwrap_or_else(|| "none".into()),
        bit_depth: depth,
        frame_rate: frame_rate.into(),
        fps: Rational::from(frame_rate).value(),
        r_frame_rate: r.into(),
        time_base: tb.into(),
        duration: tb_seconds(st.duration(), tb).or_else(|| matroska_duration(st)),
        frame_count: (frames > 0).then_some(frames as u64),
        frame_count_exact: false,
        // Header guess: the base rate differs from the average one.
        vfr: avg.numerator() > 0 && r.numerator() > 0 && avg != r,
        rotation,
        color_space: cs.name().map(str::to_string),
        color_range: cr.name().map(str::to_string),
        language: language(st),
    }
}

/// Matroska keeps per-stream durations in a "DURATION" tag ("00:00:02.000000000").
pub(crate) fn matroska_duration(st: &format::stream::Stream) -> Option<f64> {
    let tag = st.metadata().get("DURATION").map(str::to_string)?;
    let mut parts = tag.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn audio_info(st: &format::stream::Stream) -> AudioInfo {
    let par = st.parameters();
    let (channels, rate, bit_rate, layout) = unsafe {
        let p = &*par.as_ptr();
        let mut buf = [0 as std::os::raw::c_char; 128];
        let n = ffi::av_channel_layout_describe(&p.ch_layout, buf.as_mut_ptr(), buf.len());
        let layout = (n > 0).then(|| {
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        });
        (
            p.ch_layout.nb_channels as u16,
            p.sample_rate as u32,
            p.bit_rate,
            layout,
        )
    };
    AudioInfo {
        index: st.index(),
        codec: codec_name(par.id()),
        channels,
        channel_layout: layout,
        sample_rate: rate,
        bit_rate: (bit_rate > 0).then_some(bit_rate),
        language: language(st),
        duration: tb_seconds(st.duration(), st.time_base()).or_else(|| matroska_duration(st)),
    }
}

struct Scan {
    frames: u64,
    vfr: bool,
}

/// Counts the video packets and looks at their spacing. Demuxing only: fast, and the memory is
/// one timestamp per frame.
fn scan_video_packets(
    ictx: &mut format::context::Input,
    index: usize,
    spec: &InputSpec,
) -> Result<Scan> {
    let mut pts = Vec::new();
    let mut skipped = 0u32;
    loop {
        // Fresh each time: `Packet::read` does not release what the packet held.
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(ictx) {
            Ok(()) => {
                skipped = 0;
                if packet.stream() == index {
                    pts.push(packet.pts().or(packet.dts()));
                }
            }
            Err(ffmpeg::Error::Eof) => break,
            // A demuxer that cannot resync returns this forever; stop after a long run.
            Err(ffmpeg::Error::InvalidData) => {
                skipped += 1;
                if skipped >= 1000 {
                    return Err(MediaError::Read {
                        path: spec.to_string(),
                        cause: format!(
                            "damaged data after {} video packets (an mp4 read from a pipe needs its index in front: ffmpeg -movflags +faststart)",
                            pts.len()
                        ),
                    });
                }
                continue;
            }
            Err(e) => {
                return Err(MediaError::Read {
                    path: spec.to_string(),
                    cause: format!("{e} after {} video packets", pts.len()),
                })
            }
        }
    }
    let frames = pts.len() as u64;
    let mut known: Vec<i64> = pts.into_iter().flatten().collect();
    known.sort_unstable();
    Ok(Scan {
        frames,
        vfr: is_variable(&known),
    })
}

/// Frame spacing varies by more than rounding: more than one tick and more than 1 %.
pub(crate) fn is_variable(sorted_pts: &[i64]) -> bool {
    let gaps: Vec<i64> = sorted_pts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    let (Some(&min), Some(&max)) = (gaps.iter().min(), gaps.iter().max()) else {
        return false;
    };
    let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
    (max - min) as f64 > 1.0_f64.max(0.01 * mean)
}

#[cfg(test)]
mod tests {
    use super::is_variable;

    #[test]
    fn rounding_jitter_is_not_vfr() {
        // 30000/1001 fps in a 1/1000 time base: gaps of 33 and 34 ms.
        let pts: Vec<i64> = (0..100)
            .map(|i| (i as f64 * 1001.0 / 30.0).round() as i64)
            .collect();
        assert!(!is_variable(&pts));
        let cfr: Vec<i64> = (0..100).map(|i| i * 512).collect();
        assert!(!is_variable(&cfr));
    }

    #[test]
    fn changing_gaps_are_vfr() {
        let mut pts: Vec<i64> = (0..50).map(|i| i * 40).collect();
        pts.extend((0..50).map(|i| 2000 + i * 20));
        assert!(is_variable(&pts));
    }
}
