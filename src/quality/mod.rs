//! Semantic quality: what an edited clip of the demo domain (coloured shapes over plain,
//! striped or checkered backgrounds, `models/train/domain.py`) shows, read back from its RGB
//! frames, and how that compares with what the edit asked for.
//!
//! - `palette`: the colours, shapes and textures of the domain, read from `heldout.json`
//!   (nothing here is hard-coded to one palette)
//! - `analyse`: one frame → background colour and texture, object mask, objects (colour,
//!   shape, area, centroid); a clip → the same per frame plus a majority summary with tracks
//! - `moments`: shape signatures (complex moments that blur does not change)
//! - `heldout`: the held-out set (`heldout.json` and its clips) and the scene each clip and
//!   each of its edits should show
//! - `score`: an analysed clip against an expected scene (attribute checks, motion error,
//!   ghost frames, flicker)
//! - `sheet`: contact sheets (a row of evenly spaced frames per video) written as PNG
//!
//! Everything is deterministic: the same frames give the same answers, bit for bit.

pub mod analyse;
pub mod heldout;
mod moments;
pub mod palette;
pub mod score;
pub mod sheet;

use std::path::{Path, PathBuf};

pub use analyse::{Analyser, AnalyserConfig, ClipAnalysis, FrameAnalysis, ObjectInfo};
pub use heldout::{EditKind, Heldout};
pub use palette::{Palette, Shape, Texture};
pub use score::{Comparison, Expected};

use crate::media::{InputSpec, MediaError, RgbFrame, VideoSource};

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error("{}: {cause}", path.display())]
    Read { path: PathBuf, cause: String },

    #[error("{}: {cause}", path.display())]
    Format { path: PathBuf, cause: String },

    #[error("palette: {0}")]
    Palette(String),

    #[error(transparent)]
    Media(#[from] MediaError),
}

pub type Result<T, E = QualityError> = std::result::Result<T, E>;

/// Every frame of a video, decoded by ctxd's own media layer (upright RGB24).
///
/// # Errors
/// Whatever the decoder reports (missing, unreadable, truncated input).
pub fn read_frames(path: &Path) -> Result<Vec<RgbFrame>, MediaError> {
    VideoSource::open(&InputSpec::File(path.to_path_buf()))?.collect()
}
