//! Audio tracks of an output: copied packet for packet when the container can hold the codec,
//! otherwise re-encoded (AAC for mp4/mov, Opus for webm, AAC elsewhere). Never dropped.

use ffmpeg_next::{self as ffmpeg, codec, ffi, filter, format, frame, Rational as AvRational};
use serde::Serialize;

use super::decode::AudioLayout;
use super::error::MediaError;

/// What happens to one audio track, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct AudioPlan {
    pub source_index: usize,
    pub source_codec: String,
    /// "copy" or "re-encode".
    pub action: String,
    pub output_codec: String,
    pub reason: Option<String>,
}

/// The output container family, as far as audio rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Mp4,
    Mov,
    Webm,
    Other,
}

/// Codecs we copy into each family. mp4/mov/webm are strict about what players accept, so
/// these are explicit lists; other containers accept whatever FFmpeg's muxer says it can hold.
fn copyable(family: Family, codec: &str) -> Option<bool> {
    match family {
        // Not FLAC: FFmpeg 5 writes it into MP4 only as an experimental feature (the header
        // fails without -strict), and players differ; it is re-encoded instead.
        Family::Mp4 => Some(matches!(codec, "aac" | "mp3" | "ac3" | "eac3" | "alac")),
        Family::Mov => Some(
            matches!(codec, "aac" | "mp3" | "ac3" | "eac3" | "alac") || codec.starts_with("pcm_"),
        ),
        Family::Webm => Some(matches!(codec, "opus" | "vorbis")),
        Family::Other => None,
    }
}

pub(crate) enum AudioRoute {
    Copy {
        ost: usize,
        src_tb: AvRational,
        ost_tb: AvRational,
        preroll: Preroll,
    },
    Reencode(Box<Reencoder>),
}

/// FFmpeg 5.1's Matroska muxer writes Opus's pre-skip as CodecDelay, and its demuxer
/// subtracts it from every timestamp, but the muxer does not add it back when writing blocks.
/// Left alone, an Opus track would come out one pre-skip (6.5 ms) earlier than it went in;
/// adding it here keeps audio and video exactly where the source had them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Preroll {
    samples: i64,
    rate: i32,
    /// `samples` in the output stream's time base, set once the header is written.
    ticks: i64,
}

impl Preroll {
    fn new(matroska: bool, codec: codec::Id, samples: i32, rate: i32) -> Preroll {
        if matroska && codec == codec::Id::OPUS && samples > 0 && rate > 0 {
            Preroll {
                samples: samples as i64,
                rate,
                ticks: 0,
            }
        } else {
            Preroll::default()
        }
    }

    fn resolve(&mut self, tb: AvRational) {
        if self.samples > 0 {
            self.ticks = self.samples.rescale_to(AvRational::new(1, self.rate), tb);
        }
    }

    fn apply(&self, p: &mut ffmpeg::Packet) {
        if self.ticks != 0 {
            p.set_pts(p.pts().map(|t| t + self.ticks));
            p.set_dts(p.dts().map(|t| t + self.ticks));
        }
    }
}

pub(crate) struct Reencoder {
    ost: usize,
    ost_tb: AvRational,
    preroll: Preroll,
    decoder: ffmpeg::decoder::Audio,
    encoder: ffmpeg::encoder::Audio,
    graph: filter::Graph,
}

/// Adds an output stream for `track` to `octx` (before the header is written).
pub(crate) fn add_route(
    octx: &mut format::context::Output,
    family: Family,
    track: &AudioLayout,
    out: &std::path::Path,
) -> Result<(AudioRoute, AudioPlan), MediaError> {
    let err = |cause: String| MediaError::Encode {
        path: out.to_path_buf(),
        cause,
    };
    let codec_id = track.parameters.id();
    // 1: it fits; 0: it does not; negative: the muxer keeps no list (MPEG-TS), and then the
    // codecs it is known to carry.
    let muxer_can = match unsafe {
        ffi::avformat_query_codec(
            (*octx.as_ptr()).oformat,
            codec_id.into(),
            ffi::FF_COMPLIANCE_NORMAL,
        )
    } {
        1 => true,
        0 => false,
        _ => matches!(
            track.codec.as_str(),
            "aac" | "mp3" | "mp2" | "ac3" | "eac3" | "opus"
        ),
    };
    let copy = copyable(family, &track.codec).unwrap_or(muxer_can) && muxer_can;
    let matroska = unsafe {
        let name = std::ffi::CStr::from_ptr((*(*octx.as_ptr()).oformat).name).to_string_lossy();
        name == "matroska" || name == "webm"
    };
    let metadata = dict(&track.metadata);
    if copy {
        let mut ost = octx
            .add_stream(ffmpeg::encoder::find(codec::Id::None))
            .map_err(|e| err(format!("cannot add audio stream: {e}")))?;
        ost.set_parameters(track.parameters.clone());
        unsafe { (*(*ost.as_mut_ptr()).codecpar).codec_tag = 0 };
        ost.set_metadata(metadata);
        let plan = AudioPlan {
            source_index: track.source_index,
            source_codec: track.codec.clone(),
            action: "copy".into(),
            output_codec: track.codec.clone(),
            reason: None,
        };
        let (padding, rate) = unsafe {
            let p = &*track.parameters.as_ptr();
            (p.initial_padding, p.sample_rate)
        };
        return Ok((
            AudioRoute::Copy {
                ost: ost.index(),
                src_tb: track.time_base,
                ost_tb: track.time_base,
                preroll: Preroll::new(matroska, codec_id, padding, rate),
            },
            plan,
        ));
    }

    let (enc_name, out_codec) = if family == Family::Webm {
        ("libopus", "opus")
    } else {
        ("aac", "aac")
    };
    let reason = format!(
        "the {} container cannot hold {}",
        match family {
            Family::Mp4 => "mp4",
            Family::Mov => "mov",
            Family::Webm => "webm",
            Family::Other => "output",
        },
        track.codec
    );
    let enc_codec = ffmpeg::encoder::find_by_name(enc_name).ok_or_else(|| {
        err(format!(
            "{reason} and FFmpeg has no {enc_name} encoder to convert it"
        ))
    })?;
    let mut dctx = codec::context::Context::from_parameters(track.parameters.clone())
        .map_err(|e| err(format!("audio track {}: {e}", track.source_index)))?;
    unsafe { (*dctx.as_mut_ptr()).pkt_timebase = track.time_base.into() };
    let decoder = dctx.decoder().audio().map_err(|e| {
        err(format!(
            "{reason} and its {} audio cannot be decoded to convert it: {e}",
            track.codec
        ))
    })?;
    let in_layout = if decoder.channel_layout().bits() != 0 {
        decoder.channel_layout()
    } else {
        ffmpeg::ChannelLayout::default(decoder.channels() as i32)
    };
    let channels = in_layout.channels().clamp(1, 8);
    let layout = enc_codec
        .audio()
        .ok()
        .and_then(|a| a.channel_layouts())
        .map(|l| l.best(channels))
        .unwrap_or_else(|| ffmpeg::ChannelLayout::default(channels));
    // Opus runs at 48 kHz only; AAC takes the source rate when it is a standard one.
    let rate = if out_codec == "opus" {
        48000
    } else {
        let r = decoder.rate() as i32;
        if [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
        ]
        .contains(&r)
        {
            r
        } else {
            48000
        }
    };
    let sample_fmt = enc_codec
        .audio()
        .ok()
        .and_then(|a| a.formats())
        .and_then(|mut f| f.next())
        .unwrap_or(format::Sample::F32(format::sample::Type::Planar));
    let global_header = unsafe { (*(*octx.as_ptr()).oformat).flags } & ffi::AVFMT_GLOBALHEADER != 0;
    let mut enc = codec::context::Context::new_with_codec(enc_codec)
        .encoder()
        .audio()
        .map_err(|e| err(e.to_string()))?;
    enc.set_rate(rate);
    enc.set_channel_layout(layout);
    enc.set_format(sample_fmt);
    enc.set_bit_rate(if channels > 2 { 384_000 } else { 160_000 });
    enc.set_time_base((1, rate));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let encoder = enc
        .open_as(enc_codec)
        .map_err(|e| err(format!("cannot open the {enc_name} encoder: {e}")))?;
    let mut ost = octx
        .add_stream(enc_codec)
        .map_err(|e| err(format!("cannot add audio stream: {e}")))?;
    ost.set_parameters(&encoder);
    ost.set_time_base((1, rate));
    ost.set_metadata(metadata);
    let ost_index = ost.index();

    let graph = build_graph(&decoder, in_layout, track.time_base, &encoder)
        .map_err(|e| err(format!("audio conversion graph: {e}")))?;
    let plan = AudioPlan {
        source_index: track.source_index,
        source_codec: track.codec.clone(),
        action: "re-encode".into(),
        output_codec: out_codec.into(),
        reason: Some(reason),
    };
    Ok((
        AudioRoute::Reencode(Box::new(Reencoder {
            ost: ost_index,
            ost_tb: AvRational::new(1, rate),
            preroll: Preroll::new(
                matroska,
                enc_codec.id(),
                unsafe { (*encoder.as_ptr()).initial_padding },
                rate,
            ),
            decoder,
            encoder,
            graph,
        })),
        plan,
    ))
}

/// abuffer → aresample/aformat → abuffersink, cutting frames to the encoder's frame size.
fn build_graph(
    decoder: &ffmpeg::decoder::Audio,
    in_layout: ffmpeg::ChannelLayout,
    tb: AvRational,
    encoder: &ffmpeg::encoder::Audio,
) -> Result<filter::Graph, ffmpeg::Error> {
    let mut graph = filter::Graph::new();
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        tb.numerator(),
        tb.denominator(),
        decoder.rate(),
        decoder.format().name(),
        in_layout.bits()
    );
    let abuffer = filter::find("abuffer").ok_or(ffmpeg::Error::FilterNotFound)?;
    let sink = filter::find("abuffersink").ok_or(ffmpeg::Error::FilterNotFound)?;
    graph.add(&abuffer, "in", &args)?;
    graph.add(&sink, "out", "")?;
    {
        let mut out = graph.get("out").ok_or(ffmpeg::Error::Bug)?;
        out.set_sample_format(encoder.format());
        out.set_channel_layout(encoder.channel_layout());
        out.set_sample_rate(encoder.rate());
    }
    graph
        .output("in", 0)?
        .input("out", 0)?
        .parse(&format!("aresample={}:async=1", encoder.rate()))?;
    graph.validate()?;
    let variable = encoder
        .codec()
        .map(|c| {
            c.capabilities()
                .contains(codec::capabilities::Capabilities::VARIABLE_FRAME_SIZE)
        })
        .unwrap_or(false);
    if !variable && encoder.frame_size() > 0 {
        graph
            .get("out")
            .ok_or(ffmpeg::Error::Bug)?
            .sink()
            .set_frame_size(encoder.frame_size());
    }
    Ok(graph)
}

impl AudioRoute {
    /// Called once the header is written: muxers may change a stream's time base.
    pub(crate) fn header_written(&mut self, octx: &format::context::Output) {
        match self {
            AudioRoute::Copy {
                ost,
                ost_tb,
                preroll,
                ..
            } => {
                if let Some(s) = octx.stream(*ost) {
                    *ost_tb = s.time_base();
                }
                preroll.resolve(*ost_tb);
            }
            AudioRoute::Reencode(r) => {
                if let Some(s) = octx.stream(r.ost) {
                    r.ost_tb = s.time_base();
                }
                r.preroll.resolve(r.ost_tb);
            }
        }
    }

    pub(crate) fn write(
        &mut self,
        mut packet: ffmpeg::Packet,
        octx: &mut format::context::Output,
    ) -> Result<(), ffmpeg::Error> {
        match self {
            AudioRoute::Copy {
                ost,
                src_tb,
                ost_tb,
                preroll,
            } => {
                packet.rescale_ts(*src_tb, *ost_tb);
                preroll.apply(&mut packet);
                packet.set_stream(*ost);
                packet.set_position(-1);
                packet.write_interleaved(octx)
            }
            AudioRoute::Reencode(r) => {
                r.decoder.send_packet(&packet)?;
                r.drain_decoder(octx)
            }
        }
    }

    pub(crate) fn finish(
        &mut self,
        octx: &mut format::context::Output,
    ) -> Result<(), ffmpeg::Error> {
        if let AudioRoute::Reencode(r) = self {
            r.decoder.send_eof()?;
            r.drain_decoder(octx)?;
            r.graph
                .get("in")
                .ok_or(ffmpeg::Error::Bug)?
                .source()
                .flush()?;
            r.drain_graph(octx)?;
            r.encoder.send_eof()?;
            r.drain_encoder(octx)?;
        }
        Ok(())
    }
}

impl Reencoder {
    fn drain_decoder(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        let mut decoded = frame::Audio::empty();
        loop {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {
                    let ts = decoded.timestamp();
                    decoded.set_pts(ts);
                    self.graph
                        .get("in")
                        .ok_or(ffmpeg::Error::Bug)?
                        .source()
                        .add(&decoded)?;
                    self.drain_graph(octx)?;
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn drain_graph(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        loop {
            // Fresh each time: the buffersink moves its frame into ours without releasing
            // what ours held (av_frame_move_ref), so a reused frame would leak.
            let mut filtered = frame::Audio::empty();
            let mut sink = self.graph.get("out").ok_or(ffmpeg::Error::Bug)?;
            match sink.sink().frame(&mut filtered) {
                Ok(()) => {
                    let sink_tb = unsafe {
                        AvRational::from(ffi::av_buffersink_get_time_base(sink.as_ptr()))
                    };
                    if let Some(pts) = filtered.pts() {
                        filtered.set_pts(Some(pts.rescale_to(sink_tb, self.encoder.time_base())));
                    }
                    self.encoder.send_frame(&filtered)?;
                    self.drain_encoder(octx)?;
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn drain_encoder(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        let mut packet = ffmpeg::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    packet.rescale_ts(self.encoder.time_base(), self.ost_tb);
                    self.preroll.apply(&mut packet);
                    packet.set_stream(self.ost);
                    packet.write_interleaved(octx)?;
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

trait RescaleTo {
    fn rescale_to(self, from: AvRational, to: AvRational) -> i64;
}

impl RescaleTo for i64 {
    fn rescale_to(self, from: AvRational, to: AvRational) -> i64 {
        unsafe { ffi::av_rescale_q(self, from.into(), to.into()) }
    }
}

pub(crate) fn dict(pairs: &[(String, String)]) -> ffmpeg::Dictionary<'static> {
    let mut d = ffmpeg::Dictionary::new();
    for (k, v) in pairs {
        d.set(k, v);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rules_per_family() {
        assert_eq!(copyable(Family::Mp4, "aac"), Some(true));
        assert_eq!(copyable(Family::Mp4, "opus"), Some(false));
        assert_eq!(copyable(Family::Mp4, "flac"), Some(false));
        assert_eq!(copyable(Family::Webm, "aac"), Some(false));
        assert_eq!(copyable(Family::Webm, "opus"), Some(true));
        assert_eq!(copyable(Family::Mov, "pcm_s16le"), Some(true));
        assert_eq!(copyable(Family::Other, "opus"), None);
    }
}
