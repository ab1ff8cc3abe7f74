//! The report's pictures of one finished job: a before/after contact sheet (the source's
//! row, then each edit's, four frames across) and an animated before | after preview of the
//! first edit (APNG, looping), both small whatever the video's size.

use std::path::Path;

use crate::media::scale::{crop, Letterbox, Resizer};
use crate::media::{still, MediaError, RgbFrame};
use crate::quality::sheet::{compose, pick_frames, SheetOptions};

/// Short side of every picture in the report, in pixels.
const SHORT_SIDE: u32 = 96;
const SHEET_FRAMES: usize = 4;
const PREVIEW_FRAMES: usize = 12;
const PREVIEW_FPS: u32 = 4;

fn shrink(f: &RgbFrame) -> Result<RgbFrame, MediaError> {
    let g = Letterbox::fit(f.width, f.height, Some(SHORT_SIDE), 2);
    let canvas = Resizer::new(g).to_canvas(f)?;
    Ok(crop(&canvas, g.content_w, g.content_h))
}

fn frames(path: &Path, n: usize) -> Result<Vec<RgbFrame>, MediaError> {
    pick_frames(path, n)?.iter().map(shrink).collect()
}

/// Writes the sheet to `sheet` and the animation to `anim`.
///
/// # Errors
/// Decoding a video, or encoding or writing a picture.
pub fn write(
    source: &Path,
    outputs: &[&Path],
    sheet: &Path,
    anim: &Path,
) -> Result<(), MediaError> {
    let opts = SheetOptions {
        scale: Some(1),
        ..Default::default()
    };
    let mut rows = vec![frames(source, SHEET_FRAMES)?];
    for o in outputs {
        rows.push(frames(o, SHEET_FRAMES)?);
    }
    still::write_png(sheet, &compose(&[rows], &opts))?;

    let Some(first) = outputs.first() else {
        return Ok(());
    };
    let before = frames(source, PREVIEW_FRAMES)?;
    let after = frames(first, PREVIEW_FRAMES)?;
    let side_by_side: Vec<RgbFrame> = before
        .into_iter()
        .zip(after)
        .map(|(b, a)| compose(&[vec![vec![b, a]]], &opts))
        .collect();
    still::write_apng(anim, &side_by_side, PREVIEW_FPS)
}
