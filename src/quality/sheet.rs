//! Contact sheets: one row per video (source first, then its edits), N evenly spaced frames
//! across, each upscaled by nearest neighbour so small clips stay crisp, with thin dark
//! separators between cells and a wider gap between groups of rows (`ctxd sheet`, and the
//! quality bench's overview of its first clips).

use std::path::Path;

use crate::media::{InputSpec, MediaError, RgbFrame, VideoSource};

/// Colour of separators and of empty cells.
const SEPARATOR: [u8; 3] = [24, 24, 24];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SheetOptions {
    /// Frames per row, evenly spaced from the first to the last.
    pub frames: usize,
    /// Upscaling factor; None: 4 for clips up to 128 px, 2 up to 256 px, else 1.
    pub scale: Option<u32>,
    /// Pixels between cells and rows.
    pub separator: u32,
    /// Pixels between groups of rows.
    pub group_gap: u32,
}

impl Default for SheetOptions {
    fn default() -> Self {
        SheetOptions {
            frames: 8,
            scale: None,
            separator: 2,
            group_gap: 10,
        }
    }
}

/// `n` frame indices evenly spaced over `total` frames (all of them when there are fewer).
pub fn spaced(total: u64, n: usize) -> Vec<u64> {
    if total == 0 || n == 0 {
        return Vec::new();
    }
    if total <= n as u64 {
        return (0..total).collect();
    }
    if n == 1 {
        return vec![0];
    }
    (0..n as u64)
        .map(|i| (i * (total - 1) + (n as u64 - 1) / 2) / (n as u64 - 1))
        .collect()
}

/// `n` evenly spaced frames of the video at `path`, decoded by ctxd's media layer. Frames are
/// streamed: only the chosen ones are kept (the video is read twice when its container does
/// not say how many frames it has).
///
/// # Errors
/// The decoder's, naming the file.
pub fn pick_frames(path: &Path, n: usize) -> Result<Vec<RgbFrame>, MediaError> {
    let spec = InputSpec::File(path.to_path_buf());
    let source = VideoSource::open(&spec)?;
    let total = match source.layout().probe.video.frame_count {
        Some(t) => t,
        None => {
            let mut count = 0u64;
            for f in source {
                f?;
                count += 1;
            }
            count
        }
    };
    let want = spaced(total, n);
    let mut out = Vec::with_capacity(want.len());
    for (i, f) in VideoSource::open(&spec)?.enumerate() {
        let f = f?;
        if want.contains(&(i as u64)) {
            out.push(f);
        }
        if out.len() == want.len() {
            break;
        }
    }
    Ok(out)
}

/// The automatic upscaling factor for frames whose larger side is `side` pixels.
pub fn auto_scale(side: u32) -> u32 {
    match side {
        0..=128 => 4,
        129..=256 => 2,
        _ => 1,
    }
}

/// Lays out `groups` of rows of frames into one picture.
pub fn compose(groups: &[Vec<Vec<RgbFrame>>], opts: &SheetOptions) -> RgbFrame {
    let rows = || groups.iter().flatten();
    let side = rows()
        .flatten()
        .map(|f| f.width.max(f.height))
        .max()
        .unwrap_or(1);
    let s = opts.scale.unwrap_or_else(|| auto_scale(side)).max(1) as usize;
    let sep = opts.separator as usize;
    let row_w =
        |r: &Vec<RgbFrame>| sep + r.iter().map(|f| f.width as usize * s + sep).sum::<usize>();
    let row_h = |r: &Vec<RgbFrame>| r.iter().map(|f| f.height as usize * s).max().unwrap_or(0);
    let width = rows().map(row_w).max().unwrap_or(sep).max(1);
    let mut height = sep;
    for (g, group) in groups.iter().enumerate() {
        if g > 0 {
            height += opts.group_gap as usize;
        }
        height += group.iter().map(|r| row_h(r) + sep).sum::<usize>();
    }
    let mut sheet = RgbFrame::new(0, 0, 0, width as u32, height as u32);
    for px in sheet.data.chunks_exact_mut(3) {
        px.copy_from_slice(&SEPARATOR);
    }
    let mut y0 = sep;
    for (g, group) in groups.iter().enumerate() {
        if g > 0 {
            y0 += opts.group_gap as usize;
        }
        for row in group {
            let mut x0 = sep;
            for f in row {
                let (fw, fh) = (f.width as usize, f.height as usize);
                for y in 0..fh * s {
                    let src = &f.data[(y / s) * fw * 3..(y / s + 1) * fw * 3];
                    let dst = ((y0 + y) * width + x0) * 3;
                    for x in 0..fw * s {
                        sheet.data[dst + x * 3..dst + x * 3 + 3]
                            .copy_from_slice(&src[(x / s) * 3..(x / s) * 3 + 3]);
                    }
                }
                x0 += fw * s + sep;
            }
            y0 += row_h(row) + sep;
        }
    }
    sheet
}

/// Writes the contact sheet of `groups` of videos (each video one row) to `out` as PNG and
/// returns the picture's size.
///
/// # Errors
/// Decoding a video, or encoding or writing the PNG.
pub fn write_sheet(
    groups: &[Vec<&Path>],
    out: &Path,
    opts: &SheetOptions,
) -> Result<(u32, u32), MediaError> {
    let mut frames = Vec::new();
    for g in groups {
        let mut rows = Vec::new();
        for v in g {
            rows.push(pick_frames(v, opts.frames)?);
        }
        frames.push(rows);
    }
    let sheet = compose(&frames, opts);
    crate::media::still::write_png(out, &sheet)?;
    Ok((sheet.width, sheet.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_evenly_spaced_and_cover_both_ends() {
        assert_eq!(spaced(8, 8), (0..8).collect::<Vec<_>>());
        assert_eq!(spaced(3, 8), vec![0, 1, 2]);
        assert_eq!(spaced(100, 4), vec![0, 33, 66, 99]);
        assert_eq!(spaced(10, 1), vec![0]);
        assert!(spaced(0, 4).is_empty());
    }

    #[test]
    fn layout_upscales_by_nearest_neighbour_with_separators() {
        let cell = |v: u8| {
            let mut f = RgbFrame::new(0, 0, 1, 2, 1);
            f.data.fill(v);
            f.data[3] = v / 2; // the right pixel is darker
            f
        };
        let opts = SheetOptions {
            frames: 2,
            scale: Some(3),
            separator: 1,
            group_gap: 4,
        };
        let groups = vec![vec![vec![cell(200), cell(100)]], vec![vec![cell(50)]]];
        let s = compose(&groups, &opts);
        // Width: 1 + (6 + 1) * 2; height: 1 + (3 + 1) + 4 + (3 + 1).
        assert_eq!((s.width, s.height), (15, 13));
        let at = |x: usize, y: usize| s.data[(y * 15 + x) * 3];
        assert_eq!(at(0, 0), SEPARATOR[0]);
        assert_eq!(
            (at(1, 1), at(3, 3), at(4, 3), at(6, 1)),
            (200, 200, 100, 100)
        );
        assert_eq!(at(7, 1), SEPARATOR[0]);
        assert_eq!(at(8, 2), 100);
        // Second group starts after the gap: row 1 + 4 + 4 = 9.
        assert_eq!((at(1, 8), at(1, 9), at(5, 11)), (SEPARATOR[0], 50, 25));
        assert_eq!(auto_scale(64), 4);
        assert_eq!(auto_scale(1080), 1);
    }
}
