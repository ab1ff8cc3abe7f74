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

#[derive(Debug, Default, Serialize)]
pub struct Quality {
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
    /// Busy time per stage (working, not waiting) and the part of it inside ONNX Runtime.
    pub stages: BTreeMap<String, StageStats>,
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
        for (x, y) in a.iter().zip(b) {
            let d = *x as f64 - *y as f64;
            self.sum_sq += d * d;
        }
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
