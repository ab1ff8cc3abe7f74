//! The writer: encodes upright RGB24 frames with the source's timestamps (variable frame rate
//! stays variable), carries the audio tracks over (see `audio`), keeps container and stream
//! tags, and writes to a temporary file that is renamed into place only when complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ffmpeg_next::{self as ffmpeg, codec, ffi, format, frame, Rational as AvRational};
use serde::{Deserialize, Serialize};

use super::audio::{self, AudioPlan, AudioRoute, Family};
use super::color;
use super::decode::{frame_duration, AudioPacket, SourceLayout};
use super::deflicker::Deflicker;
use super::error::{MediaError, Result};
use super::frame::RgbFrame;
use super::input::ffmpeg_safe;
use super::output::OutputTarget;
use crate::atomic::TempOutput;

/// Video encoder settings. Every field has a sensible default per container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeSettings {
    /// `h264` (libx264, the default), `h265`/`hevc` (libx265), `vp9` (libvpx-vp9, the default
    /// for webm), `av1`, or any FFmpeg encoder name.
    pub codec: Option<String>,
    /// Constant rate factor (quality; lower is better). Default 18 (x264), 20 (x265), 31 (vp9).
    pub crf: Option<u32>,
    /// x264/x265 preset (ultrafast … veryslow); mapped to cpu-used for vp9. Default `medium`.
    pub preset: Option<String>,
    /// Output pixel format, e.g. `yuv420p`, `yuv420p10le`. Default: the source's, when the
    /// encoder takes it.
    pub pix_fmt: Option<String>,
    /// x264/x265 tune, e.g. `zerolatency` (no frame lookahead: what live outputs use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<String>,
    /// Frames between keyframes (live outputs: a viewer can join, an HLS segment can end,
    /// every this many frames). Default: the encoder's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gop: Option<u32>,
    /// Temporal smoothing before the encoder (`deflicker`: FFmpeg's hqdn3d, temporal part
    /// only); `None` or 0 = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deflicker: Option<f32>,
}

/// What was written, for reports and tests.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    pub path: PathBuf,
    pub container: String,
    pub video_codec: String,
    pub encoder: String,
    pub pix_fmt: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub audio: Vec<AudioPlan>,
    /// Timestamps the writer had to move because the source repeated or reordered them.
    pub adjusted_timestamps: u64,
}

/// Where the bytes go: a temporary file renamed into place by `finish`, or a live target
/// written as it goes.
enum Dest {
    Temp(TempOutput),
    Live(PathBuf),
}

impl Dest {
    fn path(&self) -> &Path {
        match self {
            Dest::Temp(t) => t.final_path(),
            Dest::Live(p) => p,
        }
    }
}

pub struct VideoSink {
    out: Dest,
    octx: format::context::Output,
    encoder: ffmpeg::encoder::Video,
    encoder_name: String,
    ost: usize,
    ost_tb: AvRational,
    enc_tb: AvRational,
    width: u32,
    height: u32,
    default_duration: i64,
    durations: HashMap<i64, i64>,
    rgb: frame::Video,
    yuv: frame::Video,
    converter: color::Scaler,
    deflicker: Option<Deflicker>,
    audio: Vec<AudioRoute>,
    plans: Vec<AudioPlan>,
    last_pts: Option<i64>,
    frames: u64,
    adjusted: u64,
    container: String,
}

fn family_of(path: &Path) -> (Family, Option<&'static str>) {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => (Family::Mp4, Some("mp4")),
        "mov" => (Family::Mov, Some("mov")),
        "mkv" => (Family::Other, Some("matroska")),
        "webm" => (Family::Webm, Some("webm")),
        _ => (Family::Other, None),
    }
}

/// Resolves a codec name to an FFmpeg encoder.
fn find_encoder(name: &str) -> Option<(ffmpeg::Codec, String)> {
    let candidates: &[&str] = match name.to_ascii_lowercase().as_str() {
        "h264" | "avc" | "x264" => &["libx264"],
        "h265" | "hevc" | "x265" => &["libx265"],
        "vp9" => &["libvpx-vp9"],
        "av1" => &["libsvtav1", "libaom-av1", "librav1e"],
        _ => &[],
    };
    if candidates.is_empty() {
        return ffmpeg::encoder::find_by_name(name)
            .filter(|c| c.is_video())
            .map(|c| (c, name.to_string()));
    }
    candidates
        .iter()
        .find_map(|n| ffmpeg::encoder::find_by_name(n).map(|c| (c, n.to_string())))
}

fn pixel_from_name(name: &str) -> Option<format::Pixel> {
    let c = std::ffi::CString::new(name).ok()?;
    let f = unsafe { ffi::av_get_pix_fmt(c.as_ptr()) };
    (f != ffi::AVPixelFormat::AV_PIX_FMT_NONE).then(|| f.into())
}

fn pixel_name(p: format::Pixel) -> String {
    p.descriptor()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{p:?}"))
}

/// 4:2:0 and 4:2:2 formats cannot hold odd sizes in most encoders; the 4:4:4 sibling can.
fn full_chroma_sibling(p: format::Pixel) -> Option<format::Pixel> {
    let name = pixel_name(p);
    let sibling = name
        .replacen("420", "444", 1)
        .replacen("422", "444", 1)
        .replace("yuvj", "yuv");
    (sibling != name)
        .then(|| pixel_from_name(&sibling))
        .flatten()
}

fn is_subsampled(p: format::Pixel) -> bool {
    p.descriptor()
        .map(|d| unsafe { (*d.as_ptr()).log2_chroma_w > 0 || (*d.as_ptr()).log2_chroma_h > 0 })
        .unwrap_or(false)
}

/// Source tags that describe the old file rather than the content (brands, the old encoder,
/// Matroska statistics); the muxer writes fresh ones.
fn keep_tag(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !(matches!(
        k.as_str(),
        "major_brand"
            | "minor_version"
            | "compatible_brands"
            | "encoder"
            | "duration"
            | "rotate"
            | "number_of_frames"
            | "number_of_bytes"
            | "bps"
    ) || k.starts_with("_statistics"))
}

fn keep(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs.iter().filter(|(k, _)| keep_tag(k)).cloned().collect()
}

impl VideoSink {
    /// Prepares `path` (container from its extension) for frames shaped like `layout.video`.
    ///
    /// # Errors
    /// `Unwritable` (missing or read-only folder), `Settings` (unknown codec or pixel format,
    /// codec the container cannot hold), `Encode` (the encoder refused the settings).
    pub fn create(
        path: &Path,
        layout: &SourceLayout,
        settings: &EncodeSettings,
    ) -> Result<VideoSink> {
        VideoSink::open(&OutputTarget::File(path.to_path_buf()), layout, settings)
    }

    /// Like `create`, for any target: a live one (stdout, HLS, URL) is written as it goes,
    /// every packet flushed, with no temporary file.
    ///
    /// # Errors
    /// As `create`; a URL that cannot be opened is `Unwritable`.
    pub fn open(
        target: &OutputTarget,
        layout: &SourceLayout,
        settings: &EncodeSettings,
    ) -> Result<VideoSink> {
        super::init();
        let path_buf = target.shown();
        let path = path_buf.as_path();
        let unwritable = |cause: String| MediaError::Unwritable {
            path: path.to_path_buf(),
            cause,
        };
        let encode_err = |cause: String| MediaError::Encode {
            path: path.to_path_buf(),
            cause,
        };
        let (family, muxer) = match target {
            OutputTarget::File(p) => family_of(p),
            live => (Family::Other, live.muxer()),
        };
        let shown = path.display().to_string();
        ffmpeg_safe(path, &shown).map_err(|_| unwritable("the name is not valid UTF-8".into()))?;
        let (out, mut octx) = if target.is_live() {
            let octx = open_live(target).map_err(unwritable)?;
            (Dest::Live(path.to_path_buf()), octx)
        } else {
            let out = TempOutput::new(path).map_err(|e| unwritable(e.to_string()))?;
            let tmp_name = ffmpeg_safe(out.temp_path(), &shown)
                .map_err(|_| unwritable("the name is not valid UTF-8".into()))?
                .to_string();
            let octx =
                open_file(&tmp_name, muxer, &shown)?.map_err(|e| unwritable(e.to_string()))?;
            (Dest::Temp(out), octx)
        };
        let container = octx.format().name().to_string();
        if matches!(container.as_str(), "matroska" | "webm") {
            // The same input and settings make the same bytes: otherwise FFmpeg's Matroska
            // muxer writes a random segment UID and the date into every file.
            unsafe { (*octx.as_mut_ptr()).flags |= ffi::AVFMT_FLAG_BITEXACT };
        }

        // --- video encoder ---
        let requested = settings.codec.clone().unwrap_or_else(|| {
            if family == Family::Webm {
                "vp9".into()
            } else {
                "h264".into()
            }
        });
        let (enc_codec, encoder_name) = find_encoder(&requested).ok_or_else(|| {
            MediaError::Settings(format!(
                "video encoder '{requested}' is not in this FFmpeg build"
            ))
        })?;
        // 1: it fits; 0: it does not; negative: the muxer keeps no list (MPEG-TS, FLV, HLS
        // take what they take), so the muxer itself is the judge when the header is written.
        let fits = unsafe {
            ffi::avformat_query_codec(
                (*octx.as_ptr()).oformat,
                enc_codec.id().into(),
                ffi::FF_COMPLIANCE_NORMAL,
            ) != 0
        };
        if !fits {
            return Err(MediaError::Settings(format!(
                "{shown}: the {container} container cannot hold {encoder_name} video; pick another codec or extension"
            )));
        }
        let v = &layout.video;
        let supported: Vec<format::Pixel> = enc_codec
            .video()
            .ok()
            .and_then(|c| c.formats())
            .map(|f| f.collect())
            .unwrap_or_default();
        let mut pix = match &settings.pix_fmt {
            Some(name) => {
                let p = pixel_from_name(name).ok_or_else(|| {
                    MediaError::Settings(format!("unknown pixel format '{name}'"))
                })?;
                if !supported.is_empty() && !supported.contains(&p) {
                    return Err(MediaError::Settings(format!(
                        "{encoder_name} cannot encode {name}; it takes: {}",
                        supported
                            .iter()
                            .map(|p| pixel_name(*p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                p
            }
            None if supported.is_empty() || supported.contains(&v.pix_fmt) => v.pix_fmt,
            None => supported[0],
        };
        if (v.width % 2 == 1 || v.height % 2 == 1) && is_subsampled(pix) {
            match full_chroma_sibling(pix).filter(|s| supported.is_empty() || supported.contains(s)) {
                Some(s) => {
                    tracing::info!(
                        "{shown}: {}x{} is odd-sized, which {} cannot hold; writing {} instead",
                        v.width, v.height, pixel_name(pix), pixel_name(s)
                    );
                    pix = s;
                }
                None => {
                    return Err(MediaError::Settings(format!(
                        "{}x{} is odd-sized and {encoder_name} cannot hold it as {}; try --pix-fmt yuv444p",
                        v.width, v.height, pixel_name(pix)
                    )))
                }
            }
        }

        let mut enc = codec::context::Context::new_with_codec(enc_codec)
            .encoder()
            .video()
            .map_err(|e| encode_err(e.to_string()))?;
        enc.set_width(v.width);
        enc.set_height(v.height);
        enc.set_format(pix);
        enc.set_time_base(v.time_base);
        if let Some(g) = settings.gop {
            enc.set_gop(g.max(1));
        }
        if v.frame_rate.numerator() > 0 {
            enc.set_frame_rate(Some(v.frame_rate));
        }
        if v.sample_aspect_ratio.numerator() > 0 {
            enc.set_aspect_ratio(v.sample_aspect_ratio);
        }
        let space = v.color.effective_space(v.height);
        enc.set_colorspace(space);
        enc.set_color_range(if v.color.is_full_range(v.pix_fmt) {
            ffmpeg::color::Range::JPEG
        } else {
            ffmpeg::color::Range::MPEG
        });
        enc.set_color_primaries(v.color.primaries);
        enc.set_color_transfer_characteristic(v.color.transfer);
        enc.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
        if unsafe { (*(*octx.as_ptr()).oformat).flags } & ffi::AVFMT_GLOBALHEADER != 0 {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ffmpeg::Dictionary::new();
        let preset = settings.preset.clone().unwrap_or_else(|| "medium".into());
        match encoder_name.as_str() {
            "libx264" | "libx265" => {
                let crf = settings
                    .crf
                    .unwrap_or(if encoder_name == "libx264" { 18 } else { 20 });
                opts.set("crf", &crf.to_string());
                opts.set("preset", &preset);
                if let Some(t) = &settings.tune {
                    opts.set("tune", t);
                }
                if encoder_name == "libx265" {
                    opts.set("x265-params", "log-level=error");
                }
            }
            "libvpx-vp9" => {
                opts.set("crf", &settings.crf.unwrap_or(31).to_string());
                opts.set("b", "0");
                opts.set("row-mt", "1");
                opts.set("deadline", "good");
                opts.set("cpu-used", vp9_cpu_used(&preset));
            }
            _ => {
                if let Some(crf) = settings.crf {
                    opts.set("crf", &crf.to_string());
                }
            }
        }
        let encoder = enc
            .open_as_with(enc_codec, opts)
            .map_err(|e| encode_err(format!("cannot open the {encoder_name} encoder: {e}")))?;
        let mut ost = octx
            .add_stream(enc_codec)
            .map_err(|e| encode_err(format!("cannot add the video stream: {e}")))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(v.time_base);
        if v.frame_rate.numerator() > 0 {
            ost.set_avg_frame_rate(v.frame_rate);
        }
        if v.r_frame_rate.numerator() > 0 {
            ost.set_rate(v.r_frame_rate);
        }
        ost.set_metadata(audio::dict(&keep(&v.metadata)));
        let ost_index = ost.index();

        // --- audio ---
        let mut routes = Vec::new();
        let mut plans = Vec::new();
        for track in &layout.audio {
            let (route, plan) = audio::add_route(&mut octx, family, track, path)?;
            if plan.action != "copy" {
                tracing::info!(
                    "{shown}: audio track {} ({}) re-encoded to {}: {}",
                    plan.source_index,
                    plan.source_codec,
                    plan.output_codec,
                    plan.reason.clone().unwrap_or_default()
                );
            }
            routes.push(route);
            plans.push(plan);
        }

        octx.set_metadata(audio::dict(&keep(&layout.metadata)));
        let mut header_opts = ffmpeg::Dictionary::new();
        for (k, v) in target.header_options().iter().filter(|_| target.is_live()) {
            header_opts.set(k, v);
        }
        if matches!(family, Family::Mp4 | Family::Mov) {
            // Index at the front: the file plays while downloading and can be piped.
            header_opts.set("movflags", "+faststart");
        }
        if container == "matroska" || container == "webm" {
            // The source's timestamps are already valid for the container (it was muxed once);
            // a second "make non-negative" shift would move the video against the audio's
            // pre-roll (Opus pre-skip) and change every frame's time.
            header_opts.set("avoid_negative_ts", "disabled");
        }
        octx.write_header_with(header_opts)
            .map_err(|e| unwritable(format!("cannot write the header: {e}")))?;
        let ost_tb = octx
            .stream(ost_index)
            .map(|s| s.time_base())
            .unwrap_or(v.time_base);
        for r in &mut routes {
            r.header_written(&octx);
        }

        let converter = color::converter(
            (format::Pixel::RGB24, v.width, v.height),
            (pix, v.width, v.height),
            space,
            v.color.is_full_range(v.pix_fmt),
        )?;
        let deflicker = match settings.deflicker.filter(|s| *s > 0.0) {
            Some(strength) => Some(
                Deflicker::new(pix, v.width, v.height, strength)
                    .map_err(|e| MediaError::Settings(format!("deflicker = {strength}: {e}")))?,
            ),
            None => None,
        };
        Ok(VideoSink {
            out,
            octx,
            enc_tb: v.time_base,
            encoder,
            encoder_name,
            ost: ost_index,
            ost_tb,
            width: v.width,
            height: v.height,
            default_duration: frame_duration(v.time_base, v.frame_rate),
            durations: HashMap::new(),
            rgb: frame::Video::new(format::Pixel::RGB24, v.width, v.height),
            yuv: frame::Video::new(pix, v.width, v.height),
            converter,
            deflicker,
            audio: routes,
            plans,
            last_pts: None,
            frames: 0,
            adjusted: 0,
            container,
        })
    }

    pub fn path(&self) -> &Path {
        self.out.path()
    }

    fn write_error(&self, e: ffmpeg::Error) -> MediaError {
        // The one muxer refusal a strange but valid source meets, in words: MP4 and MOV keep
        // the gap between decode and display time in 32 bits, and a source whose frames are
        // hours apart overflows it ("Not yet implemented in FFmpeg" alone says nothing).
        let cause = match super::log::last_message() {
            Some(m) if m.contains("pts/dts pair unsupported") => format!(
                "the frames are too far apart in time for {} (it stores the gap between decode \
                 and display order in 32 bits); write .mkv instead",
                self.container
            ),
            _ => e.to_string(),
        };
        MediaError::Unwritable {
            path: self.out.path().to_path_buf(),
            cause,
        }
    }

    /// Encodes one frame. Frames must come in presentation order, at the layout's size.
    ///
    /// # Errors
    /// `Settings` for a wrong-sized frame; `Unwritable`/`Encode` when writing fails.
    pub fn write_video(&mut self, f: &RgbFrame) -> Result<()> {
        if (f.width, f.height) != (self.width, self.height) {
            return Err(MediaError::Settings(format!(
                "frame {} is {}x{}, the output is {}x{}",
                f.index, f.width, f.height, self.width, self.height
            )));
        }
        let row = f.width as usize * 3;
        let stride = self.rgb.stride(0);
        let dst = self.rgb.data_mut(0);
        for y in 0..f.height as usize {
            dst[y * stride..y * stride + row].copy_from_slice(&f.data[y * row..(y + 1) * row]);
        }
        self.converter
            .run(&self.rgb, &mut self.yuv)
            .map_err(|e| MediaError::Settings(format!("colour conversion failed: {e}")))?;
        // Encoders need strictly increasing timestamps; a source that repeats one gets the
        // next free tick (counted in the summary) rather than a failed job.
        let mut pts = f.pts;
        if let Some(last) = self.last_pts {
            if pts <= last {
                pts = last + 1;
                self.adjusted += 1;
            }
        }
        self.last_pts = Some(pts);
        let duration = if f.duration > 0 {
            f.duration
        } else {
            self.default_duration
        };
        self.durations.insert(pts, duration);
        self.yuv.set_pts(Some(pts));
        let frame = match self.deflicker.as_mut() {
            Some(d) => d.run(&self.yuv).map_err(|e| MediaError::Encode {
                path: self.out.path().to_path_buf(),
                cause: format!("deflicker refused frame {}: {e}", f.index),
            })?,
            None => &self.yuv,
        };
        self.encoder
            .send_frame(frame)
            .map_err(|e| MediaError::Encode {
                path: self.out.path().to_path_buf(),
                cause: format!("{} refused frame {}: {e}", self.encoder_name, f.index),
            })?;
        self.frames += 1;
        self.drain_video()
    }

    fn drain_video(&mut self) -> Result<()> {
        let mut packet = ffmpeg::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    if let Some(d) = packet.pts().and_then(|p| self.durations.remove(&p)) {
                        packet.set_duration(d);
                    }
                    packet.rescale_ts(self.enc_tb, self.ost_tb);
                    packet.set_stream(self.ost);
                    super::log::clear();
                    packet
                        .write_interleaved(&mut self.octx)
                        .map_err(|e| self.write_error(e))?;
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => {
                    return Err(MediaError::Encode {
                        path: self.out.path().to_path_buf(),
                        cause: e.to_string(),
                    })
                }
            }
        }
    }

    /// Writes one audio packet from the source (copied or re-encoded per the plan).
    pub fn write_audio(&mut self, p: AudioPacket) -> Result<()> {
        let Some(route) = self.audio.get_mut(p.track) else {
            return Ok(());
        };
        route
            .write(p.packet, &mut self.octx)
            .map_err(|e| MediaError::Unwritable {
                path: self.out.path().to_path_buf(),
                cause: format!("audio track {}: {e}", p.track),
            })
    }

    /// Flushes the encoders, finishes the file and renames it into place.
    ///
    /// # Errors
    /// `Unwritable` when the trailer, the flush to disk or the rename fails (e.g. disk full);
    /// the temporary file is then removed.
    pub fn finish(self) -> Result<OutputSummary> {
        let (summary, temp) = self.finish_unpublished()?;
        if let Some(out) = temp {
            out.commit().map_err(|e| MediaError::Unwritable {
                path: summary.path.clone(),
                cause: e.to_string(),
            })?;
        }
        Ok(summary)
    }

    /// Finishes the file but leaves it under its temporary name (None for a live target):
    /// outputs that must appear together are committed as one set
    /// (`atomic::commit_set`). Dropping the temporary removes it.
    ///
    /// # Errors
    /// As `finish`, but for the rename.
    pub fn finish_unpublished(mut self) -> Result<(OutputSummary, Option<TempOutput>)> {
        self.encoder.send_eof().map_err(|e| self.write_error(e))?;
        self.drain_video()?;
        for i in 0..self.audio.len() {
            self.audio[i]
                .finish(&mut self.octx)
                .map_err(|e| MediaError::Unwritable {
                    path: self.out.path().to_path_buf(),
                    cause: format!("audio track {i}: {e}"),
                })?;
        }
        self.octx.write_trailer().map_err(|e| self.write_error(e))?;
        // Close explicitly: buffered bytes are written here, and a full disk shows up here.
        let rc = unsafe {
            let ctx = self.octx.as_mut_ptr();
            let pb_error = if (*ctx).pb.is_null() {
                0
            } else {
                (*(*ctx).pb).error
            };
            let rc = ffi::avio_closep(&mut (*ctx).pb);
            if pb_error < 0 {
                pb_error
            } else {
                rc
            }
        };
        if rc < 0 {
            return Err(self.write_error(ffmpeg::Error::from(rc)));
        }
        let summary = OutputSummary {
            path: self.out.path().to_path_buf(),
            container: self.container.clone(),
            video_codec: super::probe::codec_name(self.encoder.id()),
            encoder: self.encoder_name.clone(),
            pix_fmt: pixel_name(self.yuv.format()),
            width: self.width,
            height: self.height,
            frames: self.frames,
            audio: self.plans.clone(),
            adjusted_timestamps: self.adjusted,
        };
        let VideoSink { out, .. } = self;
        let temp = match out {
            Dest::Temp(t) => Some(t),
            Dest::Live(_) => None,
        };
        Ok((summary, temp))
    }
}

/// Opens a file output under its temporary name; the muxer is `muxer` or guessed from the
/// real name's extension (`shown`).
fn open_file(
    tmp_name: &str,
    muxer: Option<&str>,
    shown: &str,
) -> Result<std::result::Result<format::context::Output, ffmpeg::Error>> {
    if let Some(m) = muxer {
        return Ok(format::output_as(&tmp_name, m));
    }
    let unknown = || {
        MediaError::Settings(format!(
            "{shown}: unknown output container; use .mp4, .mkv, .mov, .webm or .ts"
        ))
    };
    let guess = std::ffi::CString::new(shown).map_err(|_| unknown())?;
    let fmt = unsafe { ffi::av_guess_format(std::ptr::null(), guess.as_ptr(), std::ptr::null()) };
    if fmt.is_null() {
        return Err(unknown());
    }
    let name = unsafe {
        std::ffi::CStr::from_ptr((*fmt).name)
            .to_string_lossy()
            .into_owned()
    };
    Ok(format::output_as(&tmp_name, &name))
}

/// Opens a live target: its muxer, and an I/O context unless the muxer opens its own files
/// (HLS writes its playlist and segments itself, into a folder created here).
fn open_live(target: &OutputTarget) -> std::result::Result<format::context::Output, String> {
    if let OutputTarget::Hls { playlist } = target {
        if let Some(dir) = playlist.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
        }
    }
    let name = std::ffi::CString::new(target.ffmpeg_name())
        .map_err(|_| "the name holds a NUL byte".to_string())?;
    let muxer = std::ffi::CString::new(target.muxer().unwrap_or("mpegts")).expect("static name");
    unsafe {
        let mut ps = std::ptr::null_mut();
        let rc = ffi::avformat_alloc_output_context2(
            &mut ps,
            std::ptr::null_mut(),
            muxer.as_ptr(),
            name.as_ptr(),
        );
        if rc < 0 || ps.is_null() {
            return Err(ffmpeg::Error::from(rc).to_string());
        }
        // Wrapped at once, so every early return frees the context.
        let octx = format::context::Output::wrap(ps);
        if (*(*ps).oformat).flags & ffi::AVFMT_NOFILE == 0 {
            let rc = ffi::avio_open(&mut (*ps).pb, name.as_ptr(), ffi::AVIO_FLAG_WRITE);
            if rc < 0 {
                return Err(ffmpeg::Error::from(rc).to_string());
            }
        }
        Ok(octx)
    }
}

fn vp9_cpu_used(preset: &str) -> &'static str {
    match preset {
        "ultrafast" => "8",
        "superfast" => "7",
        "veryfast" => "6",
        "faster" => "5",
        "fast" => "4",
        "medium" => "3",
        "slow" => "2",
        "slower" => "1",
        _ => "0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sizes_get_full_chroma() {
        assert_eq!(
            full_chroma_sibling(format::Pixel::YUV420P),
            Some(format::Pixel::YUV444P)
        );
        assert_eq!(
            full_chroma_sibling(format::Pixel::YUV420P10LE),
            Some(format::Pixel::YUV444P10LE)
        );
        assert_eq!(full_chroma_sibling(format::Pixel::YUV444P), None);
        assert!(is_subsampled(format::Pixel::YUV420P));
        assert!(!is_subsampled(format::Pixel::YUV444P));
    }

    #[test]
    fn stale_tags_are_dropped() {
        assert!(!keep_tag("major_brand"));
        assert!(!keep_tag("_STATISTICS_TAGS"));
        assert!(!keep_tag("DURATION"));
        assert!(keep_tag("creation_time"));
        assert!(keep_tag("language"));
    }
}
