//! The UNet and the context adapter as the sampler sees them (`diffusion::NoisePredictor`,
//! `diffusion::ContextAdapter`): tensors in by the contract's names, the adapter fed only the
//! inputs its ONNX file declares.

use ndarray::{Array1, ArrayView5, Ix5};

use super::network::{Input, Network};
use crate::diffusion::{ContextAdapter, DiffusionError, Latent, NoisePredictor, TextStates};

fn model_err(e: super::ModelError) -> DiffusionError {
    DiffusionError::Model(e.to_string())
}

fn to_latent(a: ndarray::ArrayD<f32>, what: &str) -> Result<Latent, DiffusionError> {
    a.into_dimensionality::<Ix5>()
        .map_err(|e| DiffusionError::Shape(format!("{what} must be 5-D: {e}")))
}

pub struct Unet(pub Network);

impl NoisePredictor for Unet {
    fn predict(
        &mut self,
        sample: &Latent,
        t: f32,
        text: &TextStates,
    ) -> Result<Latent, DiffusionError> {
        let b = sample.shape()[0];
        let out = self
            .0
            .run_one(
                vec![
                    ("sample", Input::F32View(sample.view().into_dyn())),
                    ("timestep", Input::F32(Array1::from_elem(b, t).into_dyn())),
                    (
                        "encoder_hidden_states",
                        Input::F32View(text.view().into_dyn()),
                    ),
                ],
                "out_sample",
            )
            .map_err(model_err)?;
        to_latent(out, "out_sample")
    }

    /// The output straight from the buffer ONNX Runtime wrote (kept for the next step).
    fn predict_with(
        &mut self,
        sample: &Latent,
        t: f32,
        text: &TextStates,
        read: &mut dyn FnMut(ArrayView5<f32>),
    ) -> Result<(), DiffusionError> {
        let b = sample.shape()[0];
        self.0
            .run_one_with(
                vec![
                    ("sample", Input::F32View(sample.view().into_dyn())),
                    ("timestep", Input::F32(Array1::from_elem(b, t).into_dyn())),
                    (
                        "encoder_hidden_states",
                        Input::F32View(text.view().into_dyn()),
                    ),
                ],
                "out_sample",
                |v| match v.into_dimensionality::<Ix5>() {
                    Ok(v) => {
                        read(v);
                        Ok(())
                    }
                    Err(e) => Err(DiffusionError::Shape(format!(
                        "out_sample must be 5-D: {e}"
                    ))),
                },
            )
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
        let out = self.0.run_one(feed, "context").map_err(model_err)?;
        to_latent(out, "context")
    }
}
