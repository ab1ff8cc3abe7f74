//! Decode → encode with no edit in between, on two threads joined by a bounded channel: the
//! media layer's own end-to-end path (`ctxd transcode`, `ctxd bench media`) and the shape the
//! editing pipeline's first and last stages take.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::decode::{AudioPacket, VideoSource};
use super::encode::{EncodeSettings, OutputSummary, VideoSink};
use super::error::{MediaError, Result};
use super::frame::RgbFrame;
use super::input::InputSpec;
use super::probe::Probe;

#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    pub settings: EncodeSettings,
    /// Frames in flight between the decoder and the encoder.
    pub channel_frames: usize,
    /// Set to stop: the output is then not written and `Cancelled` is returned.
    pub cancel: Arc<AtomicBool>,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            settings: EncodeSettings::default(),
            channel_frames: 8,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TranscodeReport {
    pub input: Probe,
    pub output: OutputSummary,
    pub frames: u64,
    pub damaged_frames: u64,
    pub seconds: f64,
    pub fps: f64,
}

/// Decodes `input` and re-encodes every frame, unchanged, into `output`.
///
/// # Errors
/// Any input error (named with the input), output error (named with the output) or
/// `Cancelled`. Nothing is left at `output` on error.
pub fn transcode(
    input: &InputSpec,
    output: &Path,
    opts: &TranscodeOptions,
) -> Result<TranscodeReport> {
    let start = Instant::now();
    let mut source = VideoSource::open(input)?;
    let layout = source.layout().clone();
    let audio_rx = source.take_audio();
    let mut sink = VideoSink::create(output, &layout, &opts.settings)?;

    let (tx, rx) = crossbeam_channel::bounded::<RgbFrame>(opts.channel_frames.max(1));
    let cancel = opts.cancel.clone();
    let decoder = std::thread::Builder::new()
        .name("decode".into())
        .spawn(move || -> Result<u64> {
            for frame in source.by_ref() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(MediaError::Cancelled);
                }
                // The receiver only goes away when encoding failed; that error is reported.
                if tx.send(frame?).is_err() {
                    break;
                }
            }
            Ok(source.corrupt_frames())
        })
        .map_err(|e| MediaError::Settings(format!("cannot start the decode thread: {e}")))?;

    let encoded = (|| -> Result<()> {
        for frame in rx.iter() {
            if opts.cancel.load(Ordering::Relaxed) {
                return Err(MediaError::Cancelled);
            }
            sink.write_video(&frame)?;
            drain_audio(&mut sink, &audio_rx, false)?;
        }
        Ok(())
    })();
    drop(rx);
    let decoded = decoder
        .join()
        .map_err(|_| MediaError::Settings("the decode thread panicked".into()))?;
    // Input errors take precedence: an encode failure after a decode failure is a consequence.
    let damaged = decoded?;
    encoded?;
    drain_audio(&mut sink, &audio_rx, true)?;
    let summary = sink.finish()?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(TranscodeReport {
        input: layout.probe.clone(),
        frames: summary.frames,
        fps: summary.frames as f64 / seconds.max(1e-9),
        output: summary,
        damaged_frames: damaged,
        seconds,
    })
}

/// Writes the audio the decoder has read so far (all of it once `to_end`).
pub fn drain_audio(
    sink: &mut VideoSink,
    rx: &crossbeam_channel::Receiver<AudioPacket>,
    to_end: bool,
) -> Result<()> {
    if to_end {
        for p in rx.iter() {
            sink.write_audio(p)?;
        }
    } else {
        while let Ok(p) = rx.try_recv() {
            sink.write_audio(p)?;
        }
    }
    Ok(())
}
