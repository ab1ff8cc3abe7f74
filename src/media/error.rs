//! Typed media errors. Every variant a user can cause names the input or output and the cause,
//! so the CLI can print it as one line and the daemon can file it as a failure reason.

use std::path::PathBuf;

/// Where a media error happened: the input or output as the user named it.
pub type Location = String;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}: no such file")]
    NotFound(Location),

    #[error("{0}: empty file (0 bytes)")]
    Empty(Location),

    #[error("{path}: not a media file FFmpeg can read ({cause})")]
    NotMedia { path: Location, cause: String },

    #[error("{path}: no video stream (found: {found})")]
    NoVideo { path: Location, found: String },

    #[error("{path}: unsupported {kind} codec '{codec}': this FFmpeg build has no decoder for it")]
    UnsupportedCodec {
        path: Location,
        kind: &'static str,
        codec: String,
    },

    #[error("{path}: corrupt data at frame {frame} (t = {time:.3} s): {cause}")]
    Corrupt {
        path: Location,
        frame: u64,
        time: f64,
        cause: String,
    },

    #[error("{path}: truncated: {detail}; decoding stopped after frame {frame} (t = {time:.3} s)")]
    Truncated {
        path: Location,
        frame: u64,
        time: f64,
        detail: String,
    },

    #[error("{path}: frame size {width}x{height} is over ctxd's limit ({} pixels a side, {} megapixels)", super::decode::MAX_SIDE, super::decode::MAX_PIXELS / 1_000_000)]
    TooLarge {
        path: Location,
        width: u32,
        height: u32,
    },
    #[error("{path}: cannot read: {cause}")]
    Read { path: Location, cause: String },

    /// A live input stopped delivering (stall timeout, connection lost, interrupted) after
    /// `time` seconds of video.
    #[error("{path}: the input stopped after t = {time:.3} s: {cause}")]
    InputLost {
        path: Location,
        time: f64,
        cause: String,
    },

    #[error("{}: cannot write output: {cause}", path.display())]
    Unwritable { path: PathBuf, cause: String },

    #[error("{}: {cause}", path.display())]
    Encode { path: PathBuf, cause: String },

    #[error("invalid encoder setting: {0}")]
    Settings(String),

    #[error("cancelled")]
    Cancelled,
}

impl MediaError {
    /// True for errors caused by the input itself (as opposed to the output or settings).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            MediaError::NotFound(_)
                | MediaError::Empty(_)
                | MediaError::NotMedia { .. }
                | MediaError::NoVideo { .. }
                | MediaError::UnsupportedCodec { .. }
                | MediaError::TooLarge { .. }
                | MediaError::Corrupt { .. }
                | MediaError::Truncated { .. }
                | MediaError::Read { .. }
                | MediaError::InputLost { .. }
        )
    }
}

pub type Result<T, E = MediaError> = std::result::Result<T, E>;
