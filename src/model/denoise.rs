//! The UNet and the context adapter as the sampler sees them (`diffusion::NoisePredictor`,
//! `diffusion::ContextAdapter`): tensors in by the contract's names, the adapter fed only the
//! inputs its ONNX file declares.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ndarray::{Array1, ArrayView5, Ix5};

use super::network::{Input, Network};
use super::runtime::Provider;
use crate::diffusion::pool;
use crate::diffusion::{ContextAdapter, DiffusionError, Latent, NoisePredictor, TextStates};

fn model_err(e: super::ModelError) -> DiffusionError {
    DiffusionError::Model(e.to_string())
}

fn to_latent(a: ndarray::ArrayD<f32>, what: &str) -> Result<Latent, DiffusionError> {
    a.into_dimensionality::<Ix5>()
        .map_err(|e| DiffusionError::Shape(format!("{what} must be 5-D: {e}")))
}

/// The UNet as a sampler sees it. Handles made with `share` run one session in turn: the
/// invert and edit stages share a large UNet instead of holding its weights twice.
pub struct Unet {
    net: Arc<Mutex<Network>>,
    /// Time this handle spent inside ONNX Runtime (not waiting for the other handle).
    busy: Duration,
}

impl Unet {
    pub fn new(net: Network) -> Unet {
        Unet {
            net: Arc::new(Mutex::new(net)),
            busy: Duration::ZERO,
        }
    }

    /// Another handle on the same session.
    pub fn share(&self) -> Unet {
        Unet {
            net: Arc::clone(&self.net),
            busy: Duration::ZERO,
        }
    }

    /// Whether `other` runs the same session.
    pub fn shares_session_with(&self, other: &Unet) -> bool {
        Arc::ptr_eq(&self.net, &other.net)
    }

    pub fn provider(&self) -> Provider {
        self.lock().provider()
    }

    /// Seconds this handle's calls spent inside ONNX Runtime.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    fn lock(&self) -> MutexGuard<'_, Network> {
        // A panic while running leaves nothing half-updated that matters here.
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the session, counting this handle's time inside ONNX Runtime.
    fn timed<R>(&mut self, f: impl FnOnce(&mut Network) -> R) -> R {
        let mut net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        let before = net.busy().0;
        let r = f(&mut net);
        self.busy += net.busy().0 - before;
        r
    }

    /// The inputs beside `sample` (which is read in place).
    fn feed(t: f32, b: usize, text: &TextStates) -> Vec<(&'static str, Input<'_>)> {
        vec![
            ("timestep", Input::F32(Array1::from_elem(b, t).into_dyn())),
            (
                "encoder_hidden_states",
                Input::F32View(text.view().into_dyn()),
            ),
        ]
    }
}

impl NoisePredictor for Unet {
    fn predict(
        &mut self,
        sample: &Latent,
        t: f32,
        text: &TextStates,
    ) -> Result<Latent, DiffusionError> {
        let out = self
            .timed(|net| {
                let mut feed = Unet::feed(t, sample.shape()[0], text);
                feed.push(("sample", Input::F32View(sample.view().into_dyn())));
                net.run_one(feed, "out_sample")
            })
            .map_err(model_err)?;
        to_latent(out, "out_sample")
    }

    /// The output read straight from ONNX Runtime's buffer.
    fn predict_with(
        &mut self,
        sample: &mut Latent,
        t: f32,
        text: &TextStates,
        read: &mut dyn FnMut(&mut Latent, ArrayView5<f32>),
    ) -> Result<(), DiffusionError> {
        self.timed(|net| {
            let feed = Unet::feed(t, sample.shape()[0], text);
            net.run_lending("sample", sample, feed, "out_sample", |s, v| {
                match v.into_dimensionality::<Ix5>() {
                    Ok(v) => {
                        read(s, v);
                        Ok(())
                    }
                    Err(e) => Err(DiffusionError::Shape(format!(
                        "out_sample must be 5-D: {e}"
                    ))),
                }
            })
        })
        .map_err(model_err)?
    }
}

pub struct Adapter(pub Network);

impl ContextAdapter for Adapter {
    fn context(
        &mut self,
        latent: &Latent,
        text: &TextStates,
        t: f32,
    ) -> Result<Latent, DiffusionError> {
        if self.0.has_input("image_embeds") {
            return Err(DiffusionError::Config(format!(
                "{}: adapters that take image_embeds are not supported yet",
                self.0.path().display()
            )));
        }
        let b = latent.shape()[0];
        let mut feed = Vec::new();
        if self.0.has_input("latent") {
            feed.push(("latent", Input::F32View(latent.view().into_dyn())));
        }
        if self.0.has_input("text_states") {
            feed.push(("text_states", Input::F32View(text.view().into_dyn())));
        }
        if self.0.has_input("timestep") {
            feed.push(("timestep", Input::F32(Array1::from_elem(b, t).into_dyn())));
        }
        // Copied once out of ONNX Runtime's buffer (r lives on across the steps), into a
        // buffer of the sampler's pool, which takes it back when the run ends: a fresh one per
        // window cost its size again in page faults.
        self.0
            .run_one_with(feed, "context", |v| {
                let v = v
                    .into_dimensionality::<Ix5>()
                    .map_err(|e| DiffusionError::Shape(format!("context must be 5-D: {e}")))?;
                let mut r = pool::take(v.raw_dim());
                r.assign(&v);
                Ok(r)
            })
            .map_err(model_err)?
    }
}
