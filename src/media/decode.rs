//! Streaming decoder: demuxes an input once, decodes its video stream into upright RGB24
//! frames pulled on demand (so memory does not depend on the video's length), and hands the
//! audio packets, untouched, to whoever writes the output.

use crossbeam_channel::{Receiver, Sender};
use ffmpeg_next::{self as ffmpeg, codec, format, frame, Rational as AvRational};

use super::color::{self, ColorInfo};
use super::error::{MediaError, Result};
use super::frame::RgbFrame;
use super::input::{self, InputSpec, LiveOptions};
use super::log;
use super::probe::{self, Probe};

/// The largest frame ctxd decodes: 16384 pixels a side, 8192x8192 in all (an 8K UHD frame
/// is 33 megapixels; one RGB frame at the limit is 200 MB).
pub const MAX_SIDE: u32 = 16384;
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// What an output needs to know about its source: timing, size, colour, audio tracks, tags.
#[derive(Clone)]
pub struct SourceLayout {
    pub name: String,
    pub metadata: Vec<(String, String)>,
    pub video: VideoLayout,
    pub audio: Vec<AudioLayout>,
    /// The header facts, for reports.
    pub probe: Probe,
}

#[derive(Debug, Clone)]
pub struct VideoLayout {
    /// Display size: what `RgbFrame`s have (rotation already applied).
    pub width: u32,
    pub height: u32,
    pub time_base: AvRational,
    pub frame_rate: AvRational,
    pub r_frame_rate: AvRational,
    pub sample_aspect_ratio: AvRational,
    pub pix_fmt: format::Pixel,
    pub color: ColorInfo,
    /// Stream tags (language, handler name...), without the rotation, which is applied.
    pub metadata: Vec<(String, String)>,
    pub rotation: u32,
    /// Frames the container says the stream has, if it says.
    pub declared_frames: Option<u64>,
}

#[derive(Clone)]
pub struct AudioLayout {
    pub source_index: usize,
    pub codec: String,
    pub parameters: codec::Parameters,
    pub time_base: AvRational,
    pub metadata: Vec<(String, String)>,
}

/// One compressed audio packet for output track `track` (an index into `SourceLayout::audio`),
/// timestamps in that track's `time_base`.
pub struct AudioPacket {
    pub track: usize,
    pub packet: ffmpeg::Packet,
}

/// The decoder. Iterate it for frames; take its audio receiver first if you want the audio.
pub struct VideoSource {
    name: String,
    ictx: format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream_index: usize,
    layout: SourceLayout,
    /// Source stream index → output audio track.
    audio_tracks: Vec<Option<usize>>,
    audio_tx: Option<Sender<AudioPacket>>,
    audio_rx: Option<Receiver<AudioPacket>>,
    /// Video packets the demuxer gave (the decoder may drop some on purpose: an edit list
    /// that starts late), checked against the container's count.
    video_packets: u64,
    /// Unreadable or partly read packets since the last whole one: at the end of a file these
    /// are data the index promises but the file does not hold (it was cut short).
    unreadable_tail: u64,
    converter: Option<(color::Scaler, (format::Pixel, u32, u32))>,
    decoded: frame::Video,
    rgb: frame::Video,
    next_index: u64,
    last_pts: Option<i64>,
    last_end: Option<i64>,
    eof_sent: bool,
    done: bool,
    corrupt_frames: u64,
    /// Damaged packets the demuxer skipped (it resyncs after them).
    skipped_packets: u64,
    /// Time, in seconds, of the last packet sent: where a decode error happened.
    last_packet_time: f64,
    /// Read from stdin or a pipe: no seeking back.
    spec_is_pipe: bool,
    /// A live input (`open_live`): its end is not checked against the header, and a failed
    /// read is `InputLost` (the caller may reconnect).
    live: bool,
    /// Added to every timestamp handed out, in seconds (a reconnected source continues the
    /// timeline of the one before it).
    offset_s: f64,
    /// A live input's read failed: the decoder is drained of the frames it holds, then this
    /// is returned.
    lost: Option<MediaError>,
    /// A live pipe read without blocking; after `ictx` so FFmpeg closes its context first.
    _pipe: Option<super::live_pipe::LivePipe>,
}

/// Damaged packets in a row after which the input is declared unreadable.
const MAX_SKIPPED_PACKETS: u32 = 1000;

impl VideoSource {
    /// Opens `spec` and prepares to decode its main video stream.
    ///
    /// # Errors
    /// `NotFound`, `Empty`, `NotMedia`, `NoVideo`, `UnsupportedCodec`.
    pub fn open(spec: &InputSpec) -> Result<VideoSource> {
        VideoSource::open_with(spec, None)
    }

    /// Opens a live input: a stream with no known end, a growing file, a URL (see
    /// `LiveOptions`).
    ///
    /// # Errors
    /// As `open`.
    pub fn open_live(spec: &InputSpec, opts: &LiveOptions) -> Result<VideoSource> {
        VideoSource::open_with(spec, Some(opts))
    }

    fn open_with(spec: &InputSpec, live: Option<&LiveOptions>) -> Result<VideoSource> {
        let (ictx, pipe) = input::open_with(spec, live)?;
        let name = spec.to_string();
        let probe = probe::describe(spec, &ictx)?;
        let st = probe::best_video_stream(&ictx, &name)?;
        let stream_index = st.index();
        let params = st.parameters();
        if ffmpeg::decoder::find(params.id()).is_none() {
            return Err(MediaError::UnsupportedCodec {
                path: name,
                kind: "video",
                codec: probe.video.codec.clone(),
            });
        }
        let mut ctx =
            codec::context::Context::from_parameters(params).map_err(|e| MediaError::NotMedia {
                path: name.clone(),
                cause: format!("bad video stream parameters: {e}"),
            })?;
        unsafe { (*ctx.as_mut_ptr()).pkt_timebase = st.time_base().into() };
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| MediaError::UnsupportedCodec {
                path: name.clone(),
                kind: "video",
                codec: format!("{} ({e})", probe.video.codec),
            })?;
        let rotation = probe.video.rotation;
        let (w, h) = (decoder.width(), decoder.height());
        // A few bytes can declare a frame of gigabytes: refuse before decoding one.
        if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
            return Err(MediaError::TooLarge {
                path: name,
                width: w,
                height: h,
            });
        }
        let (dw, dh) = if rotation % 180 == 90 { (h, w) } else { (w, h) };
        let sar = decoder.aspect_ratio();
        let sar = if rotation % 180 == 90 && sar.numerator() > 0 {
            AvRational::new(sar.denominator(), sar.numerator())
        } else {
            sar
        };
        let video = VideoLayout {
            width: dw,
            height: dh,
            time_base: st.time_base(),
            frame_rate: probe.video.frame_rate.into(),
            r_frame_rate: st.rate(),
            sample_aspect_ratio: sar,
            pix_fmt: decoder.format(),
            color: ColorInfo::of_decoder(&decoder),
            metadata: st
                .metadata()
                .iter()
                .filter(|(k, _)| *k != "rotate")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rotation,
            declared_frames: probe.video.frame_count,
        };
        let mut audio = Vec::new();
        let mut audio_tracks = vec![None; ictx.nb_streams() as usize];
        for ast in ictx.streams() {
            if ast.parameters().medium() == ffmpeg::media::Type::Audio {
                audio_tracks[ast.index()] = Some(audio.len());
                audio.push(AudioLayout {
                    source_index: ast.index(),
                    codec: probe::codec_name(ast.parameters().id()),
                    parameters: ast.parameters(),
                    time_base: ast.time_base(),
                    metadata: ast
                        .metadata()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                });
            }
        }
        let layout = SourceLayout {
            name: name.clone(),
            metadata: ictx
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            video,
            audio,
            probe,
        };
        Ok(VideoSource {
            name,
            ictx,
            decoder,
            stream_index,
            layout,
            audio_tracks,
            audio_tx: None,
            audio_rx: None,
            converter: None,
            decoded: frame::Video::empty(),
            rgb: frame::Video::empty(),
            video_packets: 0,
            unreadable_tail: 0,
            next_index: 0,
            last_pts: None,
            last_end: None,
            eof_sent: false,
            done: false,
            corrupt_frames: 0,
            skipped_packets: 0,
            last_packet_time: 0.0,
            spec_is_pipe: matches!(spec, InputSpec::Stdin)
                || matches!(spec, InputSpec::Url(u) if u.starts_with("pipe:")),
            live: live.is_some(),
            offset_s: 0.0,
            lost: None,
            _pipe: pipe,
        })
    }

    /// Shifts every timestamp handed out from now on (frames and audio packets) by `seconds`.
    pub fn shift_time(&mut self, seconds: f64) {
        self.offset_s = seconds;
    }

    /// Sends audio packets to `tx` (a reconnected source feeding the first one's writer).
    pub fn send_audio_to(&mut self, tx: Sender<AudioPacket>) {
        self.audio_rx = None;
        self.audio_tx = Some(tx);
    }

    /// The end of the last frame handed out, in seconds on the shifted timeline.
    pub fn end_time(&self) -> f64 {
        self.last_end.map(|e| self.seconds(e)).unwrap_or(0.0) + self.offset_s
    }

    fn ticks(&self, seconds: f64, tb: AvRational) -> i64 {
        if tb.numerator() <= 0 {
            return 0;
        }
        (seconds * tb.denominator() as f64 / tb.numerator() as f64).round() as i64
    }

    pub fn layout(&self) -> &SourceLayout {
        &self.layout
    }

    /// Starts forwarding audio packets. The channel is unbounded on purpose: the writer takes
    /// packets as its video catches up, so it holds only the pipeline's latency worth of
    /// compressed audio, and a bound could deadlock a file whose audio is poorly interleaved.
    pub fn take_audio(&mut self) -> Receiver<AudioPacket> {
        if let Some(rx) = self.audio_rx.take() {
            return rx;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        self.audio_tx = Some(tx);
        rx
    }

    /// Frames the decoder returned with FFmpeg's "corrupt" flag (concealed damage).
    pub fn corrupt_frames(&self) -> u64 {
        self.corrupt_frames
    }

    /// Damage met so far: frames FFmpeg concealed plus packets the demuxer skipped.
    pub fn damage(&self) -> u64 {
        self.corrupt_frames + self.skipped_packets
    }

    fn seconds(&self, ts: i64) -> f64 {
        let tb = self.layout.video.time_base;
        ts as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64
    }

    fn last_time(&self) -> f64 {
        self.last_pts.map(|p| self.seconds(p)).unwrap_or(0.0)
    }

    /// Reads packets until one video packet went into the decoder (or the input ended).
    fn feed(&mut self) -> Result<()> {
        let mut skipped = 0u32;
        loop {
            // A fresh packet per read: ffmpeg-next's `Packet::read` does not unref what the
            // packet held, so reusing one leaked every audio packet (about 1.6 KB per frame
            // of a 720p clip with AAC audio: peak memory grew with the video's length).
            let mut packet = ffmpeg::Packet::empty();
            log::clear();
            match packet.read(&mut self.ictx) {
                Ok(()) => {
                    skipped = 0;
                    // A packet the demuxer could only read in part (flagged corrupt) ends
                    // a file that was cut inside it.
                    self.unreadable_tail = if packet.is_corrupt() {
                        self.unreadable_tail + 1
                    } else {
                        0
                    };
                    let idx = packet.stream();
                    if idx == self.stream_index {
                        self.video_packets += 1;
                        if let Some(ts) = packet.pts().or(packet.dts()) {
                            self.last_packet_time = self.seconds(ts);
                        }
                        return match self.decoder.send_packet(&packet) {
                            // A live stream goes on past a packet the decoder refuses: skipped,
                            // counted, logged.
                            Err(e) if self.live => {
                                self.skipped_packets += 1;
                                tracing::warn!(
                                    "{}: skipped a damaged video packet near t = {:.3} s ({e})",
                                    self.name,
                                    self.last_packet_time
                                );
                                continue;
                            }
                            r => r.map_err(|e| self.corrupt(e)),
                        };
                    }
                    if let (Some(Some(track)), Some(tx)) =
                        (self.audio_tracks.get(idx), self.audio_tx.as_ref())
                    {
                        if self.offset_s != 0.0 {
                            let tb = self.layout.audio[*track].time_base;
                            let shift = self.ticks(self.offset_s, tb);
                            packet.set_pts(packet.pts().map(|p| p + shift));
                            packet.set_dts(packet.dts().map(|d| d + shift));
                        }
                        // The writer may have gone (it failed or finished early): then the
                        // audio has nowhere to go and the video side reports why.
                        if tx
                            .send(AudioPacket {
                                track: *track,
                                packet,
                            })
                            .is_err()
                        {
                            self.audio_tx = None;
                        }
                    }
                }
                Err(ffmpeg::Error::Eof) => {
                    self.eof_sent = true;
                    return self.decoder.send_eof().map_err(|e| self.corrupt(e));
                }
                // The demuxer resyncs after a damaged packet; the frame count check at the
                // end catches any loss. One that cannot resync would return this forever
                // (an mp4 on a pipe whose index is at the end cannot seek back to its
                // samples), so a run of them ends the read.
                Err(ffmpeg::Error::InvalidData) => {
                    skipped += 1;
                    self.unreadable_tail += 1;
                    self.skipped_packets += 1;
                    if skipped == 1 {
                        tracing::warn!(
                            "{}: skipped damaged data near t = {:.3} s",
                            self.name,
                            self.last_packet_time
                        );
                    }
                    if skipped >= MAX_SKIPPED_PACKETS {
                        let piped =
                            self.spec_is_pipe && self.layout.probe.container.contains("mp4");
                        return Err(MediaError::Corrupt {
                            path: self.name.clone(),
                            frame: self.next_index,
                            time: self.last_packet_time,
                            cause: if piped {
                                "the mp4 cannot be read from a pipe: its index is at the end \
                                 (write it with ffmpeg -movflags +faststart, or pipe mkv or mpegts)"
                                    .into()
                            } else {
                                format!(
                                    "{skipped} damaged packets in a row; the demuxer cannot resync"
                                )
                            },
                        });
                    }
                }
                Err(e) if self.live => {
                    // Drain the frames the decoder holds first; the loss is reported after.
                    self.lost = Some(MediaError::InputLost {
                        path: self.name.clone(),
                        time: self.last_time(),
                        cause: match log::last_message() {
                            Some(m) => format!("{e} ({m})"),
                            None => e.to_string(),
                        },
                    });
                    self.eof_sent = true;
                    return self.decoder.send_eof().map_err(|e| self.corrupt(e));
                }
                Err(e) => {
                    return Err(MediaError::Truncated {
                        path: self.name.clone(),
                        frame: self.next_index,
                        time: self.last_time(),
                        detail: format!("reading failed: {e}"),
                    })
                }
            }
        }
    }

    fn corrupt(&self, e: ffmpeg::Error) -> MediaError {
        let said = log::last_message();
        if let Some(m) = said.as_deref().filter(|m| m.contains("partial file")) {
            return MediaError::Truncated {
                path: self.name.clone(),
                frame: self.next_index,
                time: self.last_packet_time,
                detail: format!("the file ends inside a video packet ({m})"),
            };
        }
        let cause = match said {
            Some(m) => format!("{e} ({m})"),
            None => e.to_string(),
        };
        MediaError::Corrupt {
            path: self.name.clone(),
            frame: self.next_index,
            time: self.last_packet_time,
            cause,
        }
    }

    /// After the decoder drained: did we get the whole stream?
    fn check_complete(&self) -> Result<()> {
        if self.live {
            // A live input has no declared length; whatever arrived is the whole of it.
            return Ok(());
        }
        let v = &self.layout.video;
        if let Some(declared) = v.declared_frames {
            // Packets, not decoded frames: an edit list that starts after the first keyframe
            // has the decoder drop the frames before it, and that is not a cut.
            if self.video_packets.max(self.next_index) < declared {
                return Err(MediaError::Truncated {
                    path: self.name.clone(),
                    frame: self.next_index.saturating_sub(1),
                    time: self.last_time(),
                    detail: format!(
                        "the container lists {declared} video frames but only {} are in the file",
                        self.video_packets
                    ),
                });
            }
        } else if let Some(expected) = self.layout.probe.video.duration {
            let got_end = self.last_end.map(|e| self.seconds(e)).unwrap_or(0.0);
            let start = self.layout.probe.start_time.unwrap_or(0.0).max(0.0);
            let frame = self.layout.probe.video.fps.map(|f| 1.0 / f).unwrap_or(0.1);
            // Half a second or three frames of slack: muxers round stream durations. Some
            // containers (Matroska with a start offset) give the end time as the duration:
            // only an end short of both readings is a cut.
            let slack = (3.0 * frame).max(0.5);
            if got_end - start + slack < expected && got_end + slack < expected {
                return Err(MediaError::Truncated {
                    path: self.name.clone(),
                    frame: self.next_index.saturating_sub(1),
                    time: self.last_time(),
                    detail: format!(
                        "the video stream should last {expected:.3} s but ends at {got_end:.3} s"
                    ),
                });
            }
        }
        // The index promised packets past the end of the file: cut short, even where the video
        // is whole (a faststart MP4 cut in its last audio).
        if self.unreadable_tail > 0 {
            return Err(MediaError::Truncated {
                path: self.name.clone(),
                frame: self.next_index.saturating_sub(1),
                time: self.last_time(),
                detail: format!(
                    "the file ends in {} packet(s) that cannot be read whole (its index lists more data than it holds)",
                    self.unreadable_tail
                ),
            });
        }
        if self.next_index == 0 {
            return Err(MediaError::Truncated {
                path: self.name.clone(),
                frame: 0,
                time: 0.0,
                detail: "no video frame could be decoded".into(),
            });
        }
        Ok(())
    }

    fn convert(&mut self) -> Result<RgbFrame> {
        let (fmt, w, h) = (
            self.decoded.format(),
            self.decoded.width(),
            self.decoded.height(),
        );
        let key = (fmt, w, h);
        if self.converter.as_ref().map(|c| c.1) != Some(key) {
            let v = &self.layout.video;
            let space = v.color.effective_space(h);
            let full = v.color.is_full_range(fmt);
            let ctx = color::converter(key, (format::Pixel::RGB24, w, h), space, full)?;
            self.converter = Some((ctx, key));
            self.rgb = frame::Video::empty();
        }
        let (ctx, _) = self.converter.as_mut().expect("converter set above");
        ctx.run(&self.decoded, &mut self.rgb)
            .map_err(|e| MediaError::Settings(format!("colour conversion failed: {e}")))?;

        let pts = self
            .decoded
            .timestamp()
            .or(self.decoded.pts())
            .unwrap_or_else(|| self.synthetic_pts());
        let duration = unsafe { (*self.decoded.as_ptr()).pkt_duration };
        let mut out = RgbFrame::new(self.next_index, pts, duration.max(0), w, h);
        let stride = self.rgb.stride(0);
        let row = w as usize * 3;
        let src = self.rgb.data(0);
        for y in 0..h as usize {
            out.data[y * row..(y + 1) * row].copy_from_slice(&src[y * stride..y * stride + row]);
        }
        Ok(out.rotated(self.layout.video.rotation))
    }

    /// For streams without timestamps (raw elementary streams): the next slot at the frame rate.
    fn synthetic_pts(&self) -> i64 {
        let v = &self.layout.video;
        let per_frame = frame_duration(v.time_base, v.frame_rate);
        self.last_pts.map(|p| p + per_frame).unwrap_or(0)
    }
}

/// One frame's duration at `rate`, in `tb` units (at least 1).
pub(crate) fn frame_duration(tb: AvRational, rate: AvRational) -> i64 {
    if rate.numerator() <= 0 || rate.denominator() <= 0 || tb.numerator() <= 0 {
        return 1;
    }
    let d = (tb.denominator() as f64 * rate.denominator() as f64)
        / (tb.numerator() as f64 * rate.numerator() as f64);
    (d.round() as i64).max(1)
}

impl Iterator for VideoSource {
    type Item = Result<RgbFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => {
                    if self.decoded.is_corrupt() {
                        self.corrupt_frames += 1;
                        tracing::warn!(
                            "{}: frame {} is damaged (FFmpeg concealed the error)",
                            self.name,
                            self.next_index
                        );
                    }
                    let frame = match self.convert() {
                        Ok(f) => f,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    };
                    self.next_index += 1;
                    let per_frame =
                        frame_duration(self.layout.video.time_base, self.layout.video.frame_rate);
                    self.last_end = Some(
                        frame.pts
                            + if frame.duration > 0 {
                                frame.duration
                            } else {
                                per_frame
                            },
                    );
                    self.last_pts = Some(frame.pts);
                    let mut frame = frame;
                    if self.offset_s != 0.0 {
                        frame.pts += self.ticks(self.offset_s, self.layout.video.time_base);
                    }
                    return Some(Ok(frame));
                }
                Err(ffmpeg::Error::Eof) => {
                    self.done = true;
                    self.audio_tx = None;
                    if let Some(lost) = self.lost.take() {
                        return Some(Err(lost));
                    }
                    return self.check_complete().err().map(Err);
                }
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => {
                    if self.eof_sent {
                        // Cannot happen with a conforming decoder; do not spin.
                        self.done = true;
                        return self.check_complete().err().map(Err);
                    }
                    if let Err(e) = self.feed() {
                        self.done = true;
                        self.audio_tx = None;
                        return Some(Err(e));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.corrupt(e)));
                }
            }
        }
    }
}
