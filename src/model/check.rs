//! `ctxd models check`: validate a bundle and run each network once on small inputs, with the
//! shapes it produced, where it ran and how long loading and running took.

use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::bundle::Bundle;
use super::contract::Kind;
use super::error::{ModelError, Result};
use super::network::Input;
use super::runtime::RuntimeOptions;

#[derive(Debug, Serialize)]
pub struct NetworkCheck {
    pub network: String,
    pub file: String,
    pub provider: String,
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    pub load_ms: f64,
    pub run_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BundleCheck {
    pub bundle: String,
    pub dir: String,
    pub hashes_verified: bool,
    pub networks: Vec<NetworkCheck>,
}

/// Frames and latent side used for the trial runs: small, but F and h, w above 1 so dynamic
/// axes are exercised.
const FRAMES: usize = 2;
const LATENT_SIDE: usize = 8;

fn ramp(shape: &[usize], scale: f32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| ((i % 97) as f32 / 48.0 - 1.0) * scale)
            .collect(),
    )
    .expect("shape matches length")
}

fn shape_of(a: &ArrayD<f32>) -> Vec<usize> {
    a.shape().to_vec()
}

/// Checks `dir`: manifest, files, hashes, signatures, and one run of each network.
///
/// # Errors
/// The first problem found, naming the file and the cause.
pub fn check_bundle(dir: &Path, opts: &RuntimeOptions) -> Result<BundleCheck> {
    let bundle = Bundle::open(dir)?;
    bundle.verify()?;
    let m = bundle.manifest().clone();
    let c = m.latent.channels;
    let d = m.latent.downsampling;
    let mut report = BundleCheck {
        bundle: m.name.clone(),
        dir: dir.display().to_string(),
        hashes_verified: true,
        networks: Vec::new(),
    };
    run_checks(&bundle, opts, c, d, &mut report)?;
    Ok(report)
}

fn run_checks(
    bundle: &Bundle,
    opts: &RuntimeOptions,
    c: usize,
    d: usize,
    report: &mut BundleCheck,
) -> Result<()> {
    let m = bundle.manifest();
    let s = m.text.sequence_length;
    let dm = m.text.hidden_size;
    // Non-square, and both sides multiples of 8: a UNet with three downsamplers (SD 1.x) or
    // fewer accepts them (8 x 10 made the demo bundle's two-downsampler UNet fail a Concat).
    let (h, w) = (LATENT_SIDE, 2 * LATENT_SIDE);

    // Text encoder, on a real prompt.
    let tok = bundle.tokenizer()?;
    let ids = tok.encode(&["a red car driving on a road"])?;
    let text_states = trial(
        bundle,
        Kind::TextEncoder,
        opts,
        &[("input_ids", Input::Ids(ids.into_dyn()))],
        &[("last_hidden_state", vec![1, s, dm])],
        report,
    )?
    .remove("last_hidden_state")
    .unwrap_or_else(|| ArrayD::zeros(IxDyn(&[1, s, dm])));

    trial(
        bundle,
        Kind::VaeEncoder,
        opts,
        &[("sample", Input::F32(ramp(&[1, 3, h * d, w * d], 1.0)))],
        &[
            ("latent_mean", vec![1, c, h, w]),
            ("latent_logvar", vec![1, c, h, w]),
        ],
        report,
    )?;
    trial(
        bundle,
        Kind::VaeDecoder,
        opts,
        &[("latent_sample", Input::F32(ramp(&[1, c, h, w], 1.0)))],
        &[("sample", vec![1, 3, h * d, w * d])],
        report,
    )?;
    let latent = ramp(&[1, c, FRAMES, h, w], 1.0);
    trial(
        bundle,
        Kind::Unet,
        opts,
        &[
            ("sample", Input::F32(latent.clone())),
            (
                "timestep",
                Input::F32(ArrayD::from_elem(IxDyn(&[1]), 501.0)),
            ),
            ("encoder_hidden_states", Input::F32(text_states.clone())),
        ],
        &[("out_sample", vec![1, c, FRAMES, h, w])],
        report,
    )?;

    let mut embed_dim = None;
    if bundle.has(Kind::ImageEncoder) {
        let r = bundle
            .entry(Kind::ImageEncoder)
            .and_then(|f| f.image_size)
            .unwrap_or(224);
        let out = trial(
            bundle,
            Kind::ImageEncoder,
            opts,
            &[("pixel_values", Input::F32(ramp(&[1, 3, r, r], 1.0)))],
            &[],
            report,
        )?;
        embed_dim = out.get("image_embeds").map(|a| a.shape()[1]);
    }
    if bundle.has(Kind::ClipText) {
        let ids = bundle.clip_tokenizer()?.encode(&["a red car"])?;
        trial(
            bundle,
            Kind::ClipText,
            opts,
            &[("input_ids", Input::Ids(ids.into_dyn()))],
            &[],
            report,
        )?;
    }
    if bundle.has(Kind::ContextAdapter) {
        let e = embed_dim.unwrap_or(16);
        trial(
            bundle,
            Kind::ContextAdapter,
            opts,
            &[
                ("latent", Input::F32(latent)),
                ("text_states", Input::F32(text_states)),
                ("image_embeds", Input::F32(ramp(&[1, FRAMES, e], 0.1))),
                (
                    "timestep",
                    Input::F32(ArrayD::from_elem(IxDyn(&[1]), 501.0)),
                ),
            ],
            &[("context", vec![1, c, FRAMES, h, w])],
            report,
        )?;
    }
    Ok(())
}

/// Loads `kind`, runs it once on `inputs` (only those it declares), checks output shapes.
fn trial(
    bundle: &Bundle,
    kind: Kind,
    opts: &RuntimeOptions,
    inputs: &[(&str, Input)],
    expect: &[(&str, Vec<usize>)],
    report: &mut BundleCheck,
) -> Result<std::collections::BTreeMap<String, ArrayD<f32>>> {
    let t = Instant::now();
    let mut net = bundle.load(kind, opts)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let feed: Vec<(&str, Input)> = inputs
        .iter()
        .filter(|(n, _)| net.has_input(n))
        .map(|(n, i)| (*n, i.clone()))
        .collect();
    let input_shapes: Vec<(String, Vec<usize>)> = feed
        .iter()
        .map(|(n, i)| (n.to_string(), i.shape().to_vec()))
        .collect();
    let t = Instant::now();
    let out = net.run(feed)?;
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    for (name, want) in expect {
        let got = out
            .get(*name)
            .map(shape_of)
            .ok_or_else(|| ModelError::Run {
                network: kind.name().into(),
                cause: format!("no output '{name}'"),
            })?;
        if &got != want {
            return Err(ModelError::Signature {
                path: net.path().to_path_buf(),
                tensor: name.to_string(),
                problem: format!("produced shape {got:?}, expected {want:?}"),
            });
        }
    }
    report.networks.push(NetworkCheck {
        network: kind.name().into(),
        file: net.path().display().to_string(),
        provider: net.provider().to_string(),
        inputs: input_shapes,
        outputs: out.iter().map(|(n, a)| (n.clone(), shape_of(a))).collect(),
        load_ms,
        run_ms,
    });
    Ok(out)
}
