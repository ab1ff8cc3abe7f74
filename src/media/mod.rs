//! The media layer: everything that touches FFmpeg.
//!
//! - `input`: naming and opening inputs (file, `-` for stdin, URL; live options)
//! - `output`: naming outputs (file, `-` for stdout, HLS folder, URL)
//! - `probe`: what an input holds (`ctxd probe`)
//! - `decode`: streaming decode to upright RGB24 frames with exact timestamps; audio packets
//!   handed through untouched
//! - `frame`: the `RgbFrame` every stage passes on
//! - `color`: YUV ↔ RGB with the source's matrix and range
//! - `scale`: to the processing resolution and back
//! - `deflicker`: temporal smoothing of edited frames before they are encoded
//! - `encode` + `audio`: the writer (video encode, audio copy or re-encode, tags, atomic rename)
//! - `transcode`: decode → encode on two threads joined by a bounded channel
//! - `still`: one picture as PNG (contact sheets)
//! - `log`: FFmpeg's log into `tracing`, and its last words for error messages

pub mod audio;
pub mod color;
pub mod decode;
pub mod deflicker;
pub mod encode;
pub mod error;
pub mod frame;
pub mod input;
mod live_pipe;
mod log;
pub mod output;
pub mod probe;
pub mod scale;
pub mod still;
pub mod transcode;

pub use decode::{AudioPacket, SourceLayout, VideoSource};
pub use encode::{EncodeSettings, OutputSummary, VideoSink};
pub use error::MediaError;
pub use frame::RgbFrame;
pub use input::{InputSpec, LiveOptions, PinnedFile};
pub use output::OutputTarget;
pub use probe::{probe, Probe};

/// Initialises FFmpeg once per process (idempotent, thread-safe).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // ffmpeg::init only registers devices on 5.x; it cannot fail in a way we can act on.
        if let Err(e) = ffmpeg_next::init() {
            tracing::warn!("FFmpeg initialisation: {e}");
        }
        log::install();
    });
}
