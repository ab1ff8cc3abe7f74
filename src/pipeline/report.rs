//! The JSON report written beside each output: what went in, with which settings and models,
//! where the time went, and how good the result is by the measures the bundle allows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::job::EditTarget;
use super::stages::StageStats;
use crate::media::{OutputSummary, Probe};

#[derive(Debug, Serialize)]
pub struct BundleInfo {
    pub name: String,
    pub dir: String,
    pub sha256: BTreeMap<String, String>,
    pub providers: BTreeMap<String, String>,
}

/// Frame-to-frame change (mean absolute RGB difference of consecutive frames, 0–255), for
/// pairs inside a temporal window and pairs across a window boundary, in the output and in the
/// source. Flicker introduced at boundaries shows as `boundary_excess > 0`: the output changes
/// more across boundaries than inside windows, beyond what the source does.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Temporal {
    pub output_inside: f64,
    pub output_boundary: f64,
    pub source_inside: f64,
    pub source_boundary: f64,
    pub boundary_excess: f64,
}

/// Accumulates `Temporal` for one output as windows arrive.
#[derive(Debug, Default, Clone)]
pub struct TemporalAccumulator {
    last: Option<(Vec<u8>, Vec<u8>)>,
    sums: [f64; 4],
    counts: [u64; 2],
}

/// Mean absolute difference of two frames' bytes (0–255).
pub(crate) fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    sum_per_byte(a, b, |d| d) as f64 / a.len().max(1) as f64
}

/// `f(|x - y|)` summed over two frames' bytes, exactly. Integer sums in blocks small enough
/// not to overflow a u32 (`f` at most 255², so 65,535 bytes a block) let the compiler
/// vectorize the loop; summing in f64 per byte ran one byte at a time and was the report's
/// largest cost in `ctxd bench pipeline`.
fn sum_per_byte(a: &[u8], b: &[u8], f: impl Fn(u32) -> u32 + Copy) -> u64 {
    a.chunks(65_535)
        .zip(b.chunks(65_535))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| f(u32::from(x.abs_diff(*y))))
                .sum::<u32>() as u64
        })
        .sum()
}

impl TemporalAccumulator {
    /// One window's output frames and the matching source frames.
    pub fn add_window(&mut self, out: &[crate::media::RgbFrame], src: &[crate::media::RgbFrame]) {
        let mut last = self
            .last
            .as_ref()
            .map(|(o, s)| (o.as_slice(), s.as_slice()));
        for (i, (o, s)) in out.iter().zip(src).enumerate() {
            if let Some((lo, ls)) = last {
                let k = usize::from(i == 0); // 1: across a boundary
                self.sums[2 * k] += mean_abs_diff(&o.data, lo);
                self.sums[2 * k + 1] += mean_abs_diff(&s.data, ls);
                self.counts[k] += 1;
            }
            last = Some((&o.data, &s.data));
        }
        // Only the window's last pair is needed across the next boundary.
        let n = out.len().min(src.len());
        if n > 0 {
            self.last = Some((out[n - 1].data.clone(), src[n - 1].data.clone()));
        }
    }

    pub fn result(&self) -> Option<Temporal> {
        if self.counts[0] == 0 || self.counts[1] == 0 {
            return None;
        }
        let avg = |sum: f64, n: u64| sum / n as f64;
        let t = Temporal {
            output_inside: avg(self.sums[0], self.counts[0]),
            source_inside: avg(self.sums[1], self.counts[0]),
            output_boundary: avg(self.sums[2], self.counts[1]),
            source_boundary: avg(self.sums[3], self.counts[1]),
            boundary_excess: 0.0,
        };
        Some(Temporal {
            boundary_excess: (t.output_boundary - t.source_boundary)
                - (t.output_inside - t.source_inside),
            ..t
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Quality {
    /// Flicker at window boundaries against inside windows (None with a single window).
    pub temporal: Option<Temporal>,
    /// CLIP-T and CLIP-F, when the bundle has a CLIP image/text pair.
    pub clip: Option<super::clip::ClipScores>,
    /// PSNR (dB, RGB) of the output against the input: the `reconstruct` preset's fidelity
    /// check (inversion + sampling with the source prompt). Capped at 100 dB. Capped at 100 dB.
    pub reconstruction_psnr_db: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct EditReport {
    pub ctxd_version: &'static str,
    pub output: OutputSummary,
    pub input: Probe,
    pub edit: EditTarget,
    pub source_prompt: String,
    pub job: serde_json::Value,
    pub bundle: BundleInfo,
    pub frames: u64,
    pub windows: usize,
    pub wall_s: f64,
    /// Whether the stages worked on different windows at once (`--pipelining`), or took one
    /// window at a time, each with every core.
    pub pipelined: bool,
    /// Whether glibc asked the kernel for huge pages for this process's large blocks
    /// (`crate::huge_pages`; off with `CTXD_HUGE_PAGES=off` or on a kernel that refuses).
    pub huge_pages: bool,
    /// Busy time per stage (working, not waiting) and the part of it inside ONNX Runtime.
    pub stages: BTreeMap<String, StageStats>,
    /// Windows whose inversion came from the cache (hits) or was computed (misses); absent
    /// when the run used no cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inversion_cache: Option<crate::cache::CacheCounts>,
    pub quality: Quality,
}

/// `out.mp4` → `out.json`.
pub fn report_path(output: &Path) -> PathBuf {
    output.with_extension("json")
}

/// Running PSNR over many frames (mean squared error pooled, then one PSNR).
#[derive(Debug, Default, Clone)]
pub struct PsnrAccumulator {
    sum_sq: f64,
    count: u64,
}

impl PsnrAccumulator {
    pub fn add(&mut self, a: &[u8], b: &[u8]) {
        self.sum_sq += sum_per_byte(a, b, |d| d * d) as f64;
        self.count += a.len().min(b.len()) as u64;
    }

    pub fn psnr(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let mse = self.sum_sq / self.count as f64;
        // Identical frames have infinite PSNR, which JSON cannot hold: cap at 100 dB.
        Some(if mse == 0.0 {
            100.0
        } else {
            (10.0 * (255.0f64 * 255.0 / mse).log10()).min(100.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::RgbFrame;

    /// Bytes that cover every difference, over more than one block of `sum_per_byte`.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        (0..n as u64)
            .map(|i| ((i * 2_654_435_761 + seed * 40_503) >> 7) as u8)
            .collect()
    }

    #[test]
    fn integer_sums_match_per_byte_floats_exactly() {
        let (a, b) = (bytes(200_001, 1), bytes(200_001, 2));
        let want_abs: f64 = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y) as f64).sum();
        let want_sq: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        assert_eq!(mean_abs_diff(&a, &b), want_abs / a.len() as f64);
        let mut acc = PsnrAccumulator::default();
        acc.add(&a, &b);
        assert_eq!(acc.sum_sq, want_sq);
        // The extremes: every byte 0 against 255 stays exact (no block overflows).
        let (zero, full) = (vec![0u8; 70_000], vec![255u8; 70_000]);
        assert_eq!(sum_per_byte(&zero, &full, |d| d * d), 70_000 * 65_025);
    }

    #[test]
    fn temporal_splits_pairs_at_window_boundaries() {
        let frame = |v: u8| RgbFrame {
            data: vec![v; 12],
            ..RgbFrame::new(0, 0, 0, 2, 2)
        };
        let mut acc = TemporalAccumulator::default();
        // Output 0, 2, 4 | 10, 12; source 0, 1, 2 | 3, 4.
        acc.add_window(
            &[frame(0), frame(2), frame(4)],
            &[frame(0), frame(1), frame(2)],
        );
        acc.add_window(&[frame(10), frame(12)], &[frame(3), frame(4)]);
        let t = acc.result().expect("pairs inside and across");
        assert_eq!(t.output_inside, 2.0);
        assert_eq!(t.source_inside, 1.0);
        assert_eq!(t.output_boundary, 6.0);
        assert_eq!(t.source_boundary, 1.0);
        assert_eq!(t.boundary_excess, 4.0);
    }
}
