//! `RgbFrame`: one decoded picture in display orientation, packed RGB24, with its exact
//! presentation timestamp. The unit every later stage works on.

/// A decoded frame: packed RGB24 rows (`width * 3` bytes each, no padding), upright.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbFrame {
    /// 0-based position in the stream's presentation order.
    pub index: u64,
    /// Presentation timestamp in the video stream's time base (`VideoLayout::time_base`).
    pub pts: i64,
    /// How long the frame is shown, in the same time base (0 if unknown).
    pub duration: i64,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbFrame {
    pub fn new(index: u64, pts: i64, duration: i64, width: u32, height: u32) -> Self {
        RgbFrame {
            index,
            pts,
            duration,
            width,
            height,
            data: vec![0; width as usize * height as usize * 3],
        }
    }

    /// The frame rotated clockwise by `degrees` (0, 90, 180 or 270).
    pub fn rotated(self, degrees: u32) -> RgbFrame {
        let (w, h) = (self.width as usize, self.height as usize);
        let src = &self.data;
        let (nw, nh, data) = match degrees % 360 {
            90 => {
                // Output row y, column x shows source row h-1-x, column y.
                let mut out = vec![0u8; src.len()];
                for y in 0..w {
                    for x in 0..h {
                        let s = ((h - 1 - x) * w + y) * 3;
                        let d = (y * h + x) * 3;
                        out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                    }
                }
                (h, w, out)
            }
            180 => {
                let mut out = vec![0u8; src.len()];
                for (i, px) in src.chunks_exact(3).enumerate() {
                    let d = (w * h - 1 - i) * 3;
                    out[d..d + 3].copy_from_slice(px);
                }
                (w, h, out)
            }
            270 => {
                // Output row y, column x shows source row x, column w-1-y.
                let mut out = vec![0u8; src.len()];
                for y in 0..w {
                    for x in 0..h {
                        let s = (x * w + (w - 1 - y)) * 3;
                        let d = (y * h + x) * 3;
                        out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                    }
                }
                (h, w, out)
            }
            _ => return self,
        };
        RgbFrame {
            width: nw as u32,
            height: nh as u32,
            data,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 frame whose red channel numbers the pixels 1..=6 in row order.
    fn numbered() -> RgbFrame {
        let mut f = RgbFrame::new(0, 0, 1, 3, 2);
        for i in 0..6 {
            f.data[i * 3] = i as u8 + 1;
        }
        f
    }

    fn reds(f: &RgbFrame) -> Vec<u8> {
        f.data.chunks_exact(3).map(|p| p[0]).collect()
    }

    #[test]
    fn rotations_move_pixels_clockwise() {
        // 1 2 3        90° cw:  4 1       180°: 6 5 4     270° cw: 3 6
        // 4 5 6                 5 2             3 2 1              2 5
        //                       6 3                                1 4
        let r90 = numbered().rotated(90);
        assert_eq!((r90.width, r90.height), (2, 3));
        assert_eq!(reds(&r90), vec![4, 1, 5, 2, 6, 3]);
        assert_eq!(reds(&numbered().rotated(180)), vec![6, 5, 4, 3, 2, 1]);
        let r270 = numbered().rotated(270);
        assert_eq!((r270.width, r270.height), (2, 3));
        assert_eq!(reds(&r270), vec![3, 6, 2, 5, 1, 4]);
        assert_eq!(numbered().rotated(0), numbered());
        assert_eq!(numbered().rotated(90).rotated(270), numbered());
    }
}
