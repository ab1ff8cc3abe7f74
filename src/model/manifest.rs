//! `bundle.toml`: the manifest of a model bundle. Every key is documented here once; unknown
//! keys are errors naming the key and the file (a typo must not silently change behaviour).
//!
//! ```toml
//! format_version = 1
//! name = "tiny"
//! description = "..."
//! preset = "demo"   optional: the pipeline preset a job that names this bundle and no preset
//!                   runs with (the bundle's native size and settings)
//! [text]       tokenizer, sequence_length, hidden_size (D), pad_token_id
//! [latent]     channels (C), downsampling (d: image side / latent side), scale_factor
//! [schedule]   train_steps, beta_schedule (linear | scaled_linear | squaredcos_cap_v2),
//!              beta_start, beta_end, prediction_type (epsilon | v_prediction),
//!              set_alpha_to_one, steps_offset                      (diffusers' DDIM config)
//!              optional rescale_zero_terminal_snr (default false: betas rescaled so that
//!              abar[T-1] = 0, Lin et al. 2023; needs v_prediction) and timestep_spacing
//!              (leading | trailing, default leading: t_i = i (T // N) + steps_offset;
//!              trailing: round(arange(T, 0, -T/N)) - 1, steps_offset ignored)
//!                                                       (models/reference/SPEC.md "Schedule")
//! [context]    k_schedule (scaled_sqrt_one_minus_abar: k_t = scale sqrt(1 - abar_t);
//!              one_minus_sqrt_abar: k_t = 1 - sqrt(abar_t)), scale, convention (U | S)
//!                                                                   (CONTEXTDIFF.md §1)
//! [models.<network>]  file, sha256, dtype (float32 | float16), optional external_data and
//!              external_data_sha256 (weights over 2 GB); image_encoder adds image_size, mean,
//!              std; clip_text adds sequence_length
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The pipeline preset made for this bundle (a name in pipelines/): what a job that names
    /// this bundle but no preset runs with. A bundle trained at one size (the demo bundle's
    /// 64 px) is otherwise run at the default preset's 512 px, slowly and in many GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub text: TextConfig,
    pub latent: LatentConfig,
    pub schedule: ScheduleConfig,
    pub context: ContextConfig,
    pub models: BTreeMap<String, ModelFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub tokenizer: String,
    pub sequence_length: usize,
    pub hidden_size: usize,
    pub pad_token_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentConfig {
    pub channels: usize,
    pub downsampling: usize,
    pub scale_factor: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `t_i = i * (T // N) + steps_offset` (SD 1.x).
    #[default]
    Leading,
    /// `round(arange(T, 0, -T/N)) - 1`: starts at T-1 (diffusers' DDIMScheduler).
    Trailing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub train_steps: usize,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    pub prediction_type: PredictionType,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    /// Zero terminal SNR (Lin et al. 2023); absent in older bundles, which means false.
    #[serde(default)]
    pub rescale_zero_terminal_snr: bool,
    /// Absent in older bundles, which means leading.
    #[serde(default)]
    pub timestep_spacing: TimestepSpacing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KSchedule {
    /// `k_t = scale * sqrt(1 - abar_t)` (the public video code).
    ScaledSqrtOneMinusAbar,
    /// `k_t = 1 - sqrt(abar_t)` (the public image code, Shifted Diffusion).
    OneMinusSqrtAbar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Convention {
    /// The UNet predicts plain noise; the sampler adds the bias.
    U,
    /// The UNet was trained on `eps + s r`; the bias is inside its prediction.
    S,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    pub k_schedule: KSchedule,
    pub scale: f64,
    pub convention: Convention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Float16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub file: String,
    pub sha256: String,
    pub dtype: Dtype,
    pub external_data: Option<String>,
    pub external_data_sha256: Option<String>,
    /// image_encoder: input side R.
    pub image_size: Option<usize>,
    /// image_encoder: per-channel normalisation of RGB in [0, 1].
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// clip_text: its own sequence length.
    pub sequence_length: Option<usize>,
}

impl Manifest {
    /// Parses and checks a manifest's text; `path` is only used in messages.
    ///
    /// # Errors
    /// `Manifest` naming the key or value at fault.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let err = |cause: String| ModelError::Manifest {
            path: path.to_path_buf(),
            cause,
        };
        let m: Manifest = toml::from_str(text)
            .map_err(|e| err(e.message().to_string() + &location(text, e.span())))?;
        if m.format_version != FORMAT_VERSION {
            return Err(err(format!(
                "format_version {} is not supported (this ctxd reads {FORMAT_VERSION})",
                m.format_version
            )));
        }
        for (name, f) in &m.models {
            if super::contract::Kind::from_name(name).is_none() {
                return Err(err(format!(
                    "unknown network [models.{name}] (expected one of: {})",
                    super::contract::Kind::ALL.map(|k| k.name()).join(", ")
                )));
            }
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("[models.{name}] sha256 must be 64 hex digits")));
            }
            if f.file.contains("..") || Path::new(&f.file).is_absolute() {
                return Err(err(format!(
                    "[models.{name}] file '{}' must be a plain name inside the bundle",
                    f.file
                )));
            }
        }
        for required in ["text_encoder", "vae_encoder", "vae_decoder", "unet"] {
            if !m.models.contains_key(required) {
                return Err(err(format!("[models.{required}] is required")));
            }
        }
        let positive = [
            ("text.sequence_length", m.text.sequence_length),
            ("text.hidden_size", m.text.hidden_size),
            ("latent.channels", m.latent.channels),
            ("latent.downsampling", m.latent.downsampling),
            ("schedule.train_steps", m.schedule.train_steps),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(err(format!("{key} must be positive")));
            }
        }
        let s = &m.schedule;
        if !(0.0 < s.beta_start && s.beta_start < s.beta_end && s.beta_end < 1.0) {
            return Err(err(format!(
                "schedule betas must satisfy 0 < beta_start < beta_end < 1 (got {} and {})",
                s.beta_start, s.beta_end
            )));
        }
        if let Err(e) = s.noise_config().validate() {
            return Err(err(match e {
                crate::diffusion::DiffusionError::Config(msg) => msg,
                other => other.to_string(),
            }));
        }
        Ok(m)
    }
}

/// " at line L, column C" for a byte span, when toml gives one.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!(" (line {line}, column {col})")
}

impl ScheduleConfig {
    /// The sampler's view of this schedule.
    pub fn noise_config(&self) -> crate::diffusion::NoiseConfig {
        use crate::diffusion::{BetaSchedule as B, NoiseConfig, Prediction as P};
        NoiseConfig {
            train_steps: self.train_steps,
            beta_schedule: match self.beta_schedule {
                BetaSchedule::Linear => B::Linear,
                BetaSchedule::ScaledLinear => B::ScaledLinear,
                BetaSchedule::SquaredcosCapV2 => B::SquaredcosCapV2,
            },
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            prediction: match self.prediction_type {
                PredictionType::Epsilon => P::Epsilon,
                PredictionType::VPrediction => P::V,
            },
            set_alpha_to_one: self.set_alpha_to_one,
            steps_offset: self.steps_offset,
            rescale_zero_terminal_snr: self.rescale_zero_terminal_snr,
            timestep_spacing: match self.timestep_spacing {
                TimestepSpacing::Leading => crate::diffusion::Spacing::Leading,
                TimestepSpacing::Trailing => crate::diffusion::Spacing::Trailing,
            },
        }
    }
}

impl ContextConfig {
    pub fn k_schedule(&self) -> crate::diffusion::KSchedule {
        match self.k_schedule {
            KSchedule::ScaledSqrtOneMinusAbar => {
                crate::diffusion::KSchedule::ScaledSqrtOneMinusAbar { scale: self.scale }
            }
            KSchedule::OneMinusSqrtAbar => crate::diffusion::KSchedule::OneMinusSqrtAbar,
        }
    }

    pub fn convention(&self) -> crate::diffusion::Convention {
        match self.convention {
            Convention::U => crate::diffusion::Convention::U,
            Convention::S => crate::diffusion::Convention::S,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oracle_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/oracle/bundle.toml"
        ))
        .unwrap()
    }

    #[test]
    fn committed_manifests_parse() {
        for b in ["oracle", "oracle-shifted", "tiny"] {
            let p = format!("{}/models/{b}/bundle.toml", env!("CARGO_MANIFEST_DIR"));
            let m = Manifest::parse(&std::fs::read_to_string(&p).unwrap(), Path::new(&p)).unwrap();
            assert_eq!(m.name, b);
        }
    }

    #[test]
    fn a_bundle_may_name_its_own_preset() {
        let m = Manifest::parse(&oracle_text(), Path::new("x")).unwrap();
        assert_eq!(m.preset, None);
        let named = oracle_text().replacen("name = ", "preset = \"fast\"\nname = ", 1);
        let m = Manifest::parse(&named, Path::new("x")).unwrap();
        assert_eq!(m.preset.as_deref(), Some("fast"));
    }

    #[test]
    fn zero_snr_and_spacing_keys() {
        use crate::diffusion::{Prediction, Spacing};
        // Older bundles have neither key: false and leading.
        let m = Manifest::parse(&oracle_text(), Path::new("x")).unwrap();
        assert!(!m.schedule.rescale_zero_terminal_snr);
        assert_eq!(m.schedule.timestep_spacing, TimestepSpacing::Leading);
        let n = m.schedule.noise_config();
        assert!(!n.rescale_zero_terminal_snr && n.timestep_spacing == Spacing::Leading);

        let v = oracle_text().replace(
            "prediction_type = \"epsilon\"",
            "prediction_type = \"v_prediction\"\nrescale_zero_terminal_snr = true\n\
             timestep_spacing = \"trailing\"",
        );
        let n = Manifest::parse(&v, Path::new("x"))
            .unwrap()
            .schedule
            .noise_config();
        assert!(n.rescale_zero_terminal_snr);
        assert_eq!(n.timestep_spacing, Spacing::Trailing);
        assert_eq!(n.prediction, Prediction::V);

        // Zero terminal SNR with an epsilon network: refused, naming the key and the file.
        let eps = v.replace("\"v_prediction\"", "\"epsilon\"");
        let e = Manifest::parse(&eps, Path::new("b/bundle.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b/bundle.toml")
                && e.contains("rescale_zero_terminal_snr")
                && e.contains("v_prediction"),
            "{e}"
        );
        // Leading spacing with rescale is allowed (it just never reaches t = T-1).
        let leading = v.replace("\"trailing\"", "\"leading\"");
        assert!(Manifest::parse(&leading, Path::new("x")).is_ok());
        let e = Manifest::parse(&v.replace("\"trailing\"", "\"linspace\""), Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linspace") && e.contains("line"), "{e}");
        let e = Manifest::parse(
            &v.replace(
                "rescale_zero_terminal_snr = true",
                "rescale_zero_terminal_snr = 1",
            ),
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = oracle_text().replace(
            "scale_factor = 1.0",
            "scale_factor = 1.0\nscale_facter = 2.0",
        );
        let e = Manifest::parse(&text, Path::new("b/bundle.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b/bundle.toml") && e.contains("scale_facter") && e.contains("line"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let e = Manifest::parse(
            &oracle_text().replace("\"scaled_linear\"", "\"cubic\""),
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cubic"), "{e}");
        let e = Manifest::parse(
            &oracle_text().replace("convention = \"U\"", "convention = \"Q\""),
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Q"), "{e}");
        let e = Manifest::parse(
            &oracle_text().replace("[models.unet]", "[models.unnet]"),
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unnet"), "{e}");
        let e = Manifest::parse(
            &oracle_text().replace("file = \"unet.onnx\"", "file = \"../unet.onnx\""),
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("plain name"), "{e}");
    }
}
