//! The ONNX contract of DESIGN.md ("Model bundle contract"): which networks a bundle may hold,
//! and the names, ranks and element types of their inputs and outputs. Sessions are checked
//! against it when they load, so a wrong export fails with the tensor's name instead of a
//! shape error deep inside a run.

use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::error::{ModelError, Result};
use super::manifest::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TextEncoder,
    VaeEncoder,
    VaeDecoder,
    Unet,
    ImageEncoder,
    ClipText,
    ContextAdapter,
}

/// What an element may be: floats (fp32 or fp16, converted at the boundary) or token ids
/// (int32 or int64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Float,
    Ids,
}

#[derive(Debug, Clone, Copy)]
pub struct TensorSpec {
    pub name: &'static str,
    pub rank: usize,
    pub elem: Elem,
    pub required: bool,
}

/// A struct literal (not a function call) so the tables below are promoted to `'static`.
macro_rules! t {
    ($name:expr, $rank:expr, $elem:expr, $required:expr) => {
        TensorSpec {
            name: $name,
            rank: $rank,
            elem: $elem,
            required: $required,
        }
    };
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::TextEncoder,
        Kind::VaeEncoder,
        Kind::VaeDecoder,
        Kind::Unet,
        Kind::ImageEncoder,
        Kind::ClipText,
        Kind::ContextAdapter,
    ];

    /// The key in `[models.<name>]`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::TextEncoder => "text_encoder",
            Kind::VaeEncoder => "vae_encoder",
            Kind::VaeDecoder => "vae_decoder",
            Kind::Unet => "unet",
            Kind::ImageEncoder => "image_encoder",
            Kind::ClipText => "clip_text",
            Kind::ContextAdapter => "context_adapter",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Inputs: `required` ones must exist; optional ones may. No other input is allowed
    /// (ctxd could not feed it). The adapter needs at least one of its optional inputs.
    pub fn inputs(self) -> &'static [TensorSpec] {
        use Elem::*;
        match self {
            Kind::TextEncoder | Kind::ClipText => &[t!("input_ids", 2, Ids, true)],
            Kind::VaeEncoder => &[t!("sample", 4, Float, true)],
            Kind::VaeDecoder => &[t!("latent_sample", 4, Float, true)],
            Kind::Unet => &[
                t!("sample", 5, Float, true),
                t!("timestep", 1, Float, true),
                t!("encoder_hidden_states", 3, Float, true),
            ],
            Kind::ImageEncoder => &[t!("pixel_values", 4, Float, true)],
            Kind::ContextAdapter => &[
                t!("latent", 5, Float, false),
                t!("text_states", 3, Float, false),
                t!("image_embeds", 3, Float, false),
                t!("timestep", 1, Float, false),
            ],
        }
    }

    /// Outputs: `required` ones must exist; others are ignored.
    pub fn outputs(self) -> &'static [TensorSpec] {
        use Elem::*;
        match self {
            Kind::TextEncoder => &[
                t!("last_hidden_state", 3, Float, true),
                t!("pooler_output", 2, Float, false),
                t!("text_embeds", 2, Float, false),
            ],
            Kind::VaeEncoder => &[
                t!("latent_mean", 4, Float, true),
                t!("latent_logvar", 4, Float, true),
            ],
            Kind::VaeDecoder => &[t!("sample", 4, Float, true)],
            Kind::Unet => &[t!("out_sample", 5, Float, true)],
            Kind::ImageEncoder => &[t!("image_embeds", 2, Float, true)],
            Kind::ClipText => &[t!("text_embeds", 2, Float, true)],
            Kind::ContextAdapter => &[t!("context", 5, Float, true)],
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as the loaded session declares it.
#[derive(Debug, Clone)]
pub struct Declared {
    pub name: String,
    pub elem: TensorElementType,
    /// -1 for dynamic axes.
    pub dims: Vec<i64>,
}

fn declared(v: &ValueType, name: &str, path: &Path) -> Result<Declared> {
    match v {
        ValueType::Tensor { ty, shape, .. } => Ok(Declared {
            name: name.to_string(),
            elem: *ty,
            dims: shape.iter().copied().collect(),
        }),
        other => Err(ModelError::Signature {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            problem: format!("expected a tensor, found {other:?}"),
        }),
    }
}

fn elem_ok(spec: Elem, ty: TensorElementType) -> bool {
    match spec {
        Elem::Float => matches!(ty, TensorElementType::Float32 | TensorElementType::Float16),
        Elem::Ids => matches!(ty, TensorElementType::Int64 | TensorElementType::Int32),
    }
}

/// Checks a session's inputs and outputs against the contract and the manifest's sizes.
/// Returns the declared inputs and outputs.
///
/// # Errors
/// `Signature` naming the file, the tensor and what was expected.
pub fn check(
    kind: Kind,
    session: &Session,
    path: &Path,
    manifest: &Manifest,
) -> Result<(Vec<Declared>, Vec<Declared>)> {
    let sig_err = |tensor: &str, problem: String| ModelError::Signature {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        problem,
    };
    let ins: Vec<Declared> = session
        .inputs()
        .iter()
        .map(|o| declared(o.dtype(), o.name(), path))
        .collect::<Result<_>>()?;
    let outs: Vec<Declared> = session
        .outputs()
        .iter()
        .map(|o| declared(o.dtype(), o.name(), path))
        .collect::<Result<_>>()?;

    let expect = |list: &[Declared], specs: &[TensorSpec], what: &str| -> Result<()> {
        for spec in specs {
            match list.iter().find(|d| d.name == spec.name) {
                None if spec.required => {
                    return Err(sig_err(
                        spec.name,
                        format!(
                            "missing {what} (has: {})",
                            list.iter()
                                .map(|d| d.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
                None => {}
                Some(d) => {
                    if d.dims.len() != spec.rank {
                        return Err(sig_err(
                            spec.name,
                            format!(
                                "rank {} expected, found {} ({:?})",
                                spec.rank,
                                d.dims.len(),
                                d.dims
                            ),
                        ));
                    }
                    if !elem_ok(spec.elem, d.elem) {
                        let want = match spec.elem {
                            Elem::Float => "float32 or float16",
                            Elem::Ids => "int64 or int32",
                        };
                        return Err(sig_err(
                            spec.name,
                            format!("{want} expected, found {:?}", d.elem),
                        ));
                    }
                }
            }
        }
        Ok(())
    };
    expect(&ins, kind.inputs(), "input")?;
    expect(&outs, kind.outputs(), "output")?;
    for d in &ins {
        if !kind.inputs().iter().any(|s| s.name == d.name) {
            return Err(sig_err(
                &d.name,
                format!(
                    "unexpected input for a {kind} (the contract allows: {})",
                    kind.inputs()
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if kind == Kind::ContextAdapter && ins.is_empty() {
        return Err(sig_err(
            "(inputs)",
            "a context adapter needs at least one of latent, text_states, image_embeds, timestep"
                .into(),
        ));
    }

    // Static sizes must agree with the manifest (dynamic axes are -1 and pass).
    let c = manifest.latent.channels as i64;
    let dmodel = manifest.text.hidden_size as i64;
    let fixed: &[(&str, usize, i64, &str)] = match kind {
        Kind::TextEncoder => &[("last_hidden_state", 2, dmodel, "text.hidden_size")],
        Kind::VaeEncoder => &[
            ("latent_mean", 1, c, "latent.channels"),
            ("sample", 1, 3, "RGB"),
        ],
        Kind::VaeDecoder => &[
            ("latent_sample", 1, c, "latent.channels"),
            ("sample", 1, 3, "RGB"),
        ],
        Kind::Unet => &[
            ("sample", 1, c, "latent.channels"),
            ("out_sample", 1, c, "latent.channels"),
            ("encoder_hidden_states", 2, dmodel, "text.hidden_size"),
        ],
        Kind::ContextAdapter => &[
            ("latent", 1, c, "latent.channels"),
            ("context", 1, c, "latent.channels"),
            ("text_states", 2, dmodel, "text.hidden_size"),
        ],
        _ => &[],
    };
    for (name, axis, want, key) in fixed {
        if let Some(d) = ins.iter().chain(&outs).find(|d| d.name == *name) {
            let got = d.dims.get(*axis).copied().unwrap_or(-1);
            if got >= 0 && got != *want {
                return Err(sig_err(
                    name,
                    format!("axis {axis} is {got}, but bundle.toml says {key} = {want}"),
                ));
            }
        }
    }
    Ok((ins, outs))
}
