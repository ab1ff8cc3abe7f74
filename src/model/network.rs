//! One loaded network: an ONNX Runtime session checked against the contract, fed and read
//! by tensor name, with fp16 and int32 models converted at the boundary so callers always
//! work in f32 and i64.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::f16;
use ndarray::ArrayD;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef};

use super::contract::{self, Declared, Kind};
use super::error::{ModelError, Result};
use super::manifest::Manifest;
use super::runtime::{self, Provider, RuntimeOptions};

/// A tensor handed to a network: owned (moved into ONNX Runtime) or borrowed (read in place,
/// for the latents a sampler keeps using; it must be in standard layout).
#[derive(Debug, Clone)]
pub enum Input<'a> {
    F32(ArrayD<f32>),
    F32View(ndarray::ArrayViewD<'a, f32>),
    Ids(ArrayD<i64>),
}

impl<'a> Input<'a> {
    /// The same input under a shorter borrow.
    fn shorten<'b>(self) -> Input<'b>
    where
        'a: 'b,
    {
        match self {
            Input::F32(a) => Input::F32(a),
            Input::F32View(a) => Input::F32View(a.reborrow()),
            Input::Ids(a) => Input::Ids(a),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Input::F32(a) => a.shape(),
            Input::F32View(a) => a.shape(),
            Input::Ids(a) => a.shape(),
        }
    }
}

pub struct Network {
    kind: Kind,
    path: PathBuf,
    /// Always Some until dropped (then it may go back to the warm pool).
    session: Option<Session>,
    warm_key: Option<super::warm::Key>,
    provider: Provider,
    inputs: Vec<Declared>,
    outputs: Vec<Declared>,
    /// Time spent inside ONNX Runtime, for reports and benchmarks.
    busy: Duration,
    calls: u64,
    /// The run options of `run_one_with`: only the named output is computed.
    only: Option<(String, RunOptions<HasSelectedOutputs>)>,
}

impl Network {
    /// Loads `path` as a `kind` network and checks it against the contract.
    ///
    /// # Errors
    /// `Load`, `Device` or `Signature`.
    pub fn load(
        kind: Kind,
        path: &Path,
        manifest: &Manifest,
        opts: &RuntimeOptions,
    ) -> Result<Network> {
        let warm_key = super::warm::key(path, opts);
        let (session, provider) = match warm_key.as_ref().and_then(super::warm::take) {
            Some(warm) => warm,
            None => runtime::open_session(path, external_data(path, manifest).as_deref(), opts)?,
        };
        // Checked on every load, warm or not: the manifest may have changed.
        let (inputs, outputs) = contract::check(kind, &session, path, manifest)?;
        Ok(Network {
            kind,
            path: path.to_path_buf(),
            session: Some(session),
            warm_key,
            provider,
            inputs,
            outputs,
            busy: Duration::ZERO,
            calls: 0,
            only: None,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn inputs(&self) -> &[Declared] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Declared] {
        &self.outputs
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|d| d.name == name)
    }

    /// Static size of `axis` of input or output `name`, if the graph fixes it.
    pub fn static_dim(&self, name: &str, axis: usize) -> Option<usize> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .find(|d| d.name == name)
            .and_then(|d| d.dims.get(axis))
            .and_then(|&v| usize::try_from(v).ok())
    }

    /// Seconds inside ONNX Runtime and number of runs so far.
    pub fn busy(&self) -> (Duration, u64) {
        (self.busy, self.calls)
    }

    /// Runs the network. Every declared input must be given; outputs come back as f32.
    ///
    /// # Errors
    /// `Run` naming the network, for a missing input or an ONNX Runtime failure.
    /// Takes the inputs by value: an f32 input the graph wants as f32 moves into ONNX Runtime
    /// without a copy (these are the largest buffers of a step).
    pub fn run<'a>(
        &mut self,
        inputs: Vec<(&str, Input<'a>)>,
    ) -> Result<BTreeMap<String, ArrayD<f32>>> {
        let feed = self.feed(inputs)?;
        let start = Instant::now();
        let kind = self.kind;
        let session = self.session.as_mut().expect("present until dropped");
        let outputs = session
            .run(feed)
            .map_err(|e| run_error(kind, e.to_string()))?;
        let mut result = BTreeMap::new();
        for d in &self.outputs {
            let Some(v) = outputs.get(&d.name) else {
                continue;
            };
            let arr = match d.elem {
                TensorElementType::Float16 => {
                    v.try_extract_array::<f16>().map(|a| a.mapv(f16::to_f32))
                }
                TensorElementType::Float32 => v.try_extract_array::<f32>().map(|a| a.to_owned()),
                _ => continue,
            }
            .map_err(|e| run_error(kind, format!("output '{}': {e}", d.name)))?;
            result.insert(d.name.clone(), arr);
        }
        drop(outputs);
        self.busy += start.elapsed();
        self.calls += 1;
        Ok(result)
    }

    /// Runs and hands the f32 output `output` to `read` as a view of ONNX Runtime's own
    /// buffer, with no copy; other outputs are not computed. The buffer comes from the
    /// session's arena and goes back to it, so a step allocates no fresh latent-sized memory
    /// (fresh buffers every step cost more in page faults than the oracle's networks cost to
    /// run). An fp16 output goes through `run_one`.
    ///
    /// # Errors
    /// As `run`.
    pub fn run_one_with<R>(
        &mut self,
        inputs: Vec<(&str, Input<'_>)>,
        output: &str,
        read: impl FnOnce(ndarray::ArrayViewD<'_, f32>) -> R,
    ) -> Result<R> {
        self.run_core::<ndarray::Ix0, R>(None, inputs, output, |_, view| read(view))
    }

    /// `run_one_with` with the input `name` read in place from `lent`, which `read` then
    /// gets back writable beside the output: the sampler overwrites its latent with the next
    /// one as it reads the UNet's output, so a step needs no second latent-sized buffer.
    ///
    /// # Errors
    /// As `run`.
    pub fn run_lending<D: ndarray::Dimension, R>(
        &mut self,
        name: &str,
        lent: &mut ndarray::Array<f32, D>,
        others: Vec<(&str, Input<'_>)>,
        output: &str,
        read: impl FnOnce(&mut ndarray::Array<f32, D>, ndarray::ArrayViewD<'_, f32>) -> R,
    ) -> Result<R> {
        self.run_core(Some((name, lent)), others, output, |lent, view| {
            read(lent.expect("lent above"), view)
        })
    }

    fn run_core<D: ndarray::Dimension, R>(
        &mut self,
        mut lent: Option<(&str, &mut ndarray::Array<f32, D>)>,
        inputs: Vec<(&str, Input<'_>)>,
        output: &str,
        read: impl FnOnce(Option<&mut ndarray::Array<f32, D>>, ndarray::ArrayViewD<'_, f32>) -> R,
    ) -> Result<R> {
        // The lent input borrows `lent` only until the run has consumed the feed.
        let mut inputs: Vec<(&str, Input<'_>)> =
            inputs.into_iter().map(|(n, i)| (n, i.shorten())).collect();
        if let Some((name, a)) = &lent {
            inputs.push((name, Input::F32View(a.view().into_dyn())));
        }
        let f32_out = self
            .outputs
            .iter()
            .any(|d| d.name == output && d.elem == TensorElementType::Float32);
        if !f32_out {
            let owned = self.run_one(inputs, output)?;
            return Ok(read(lent.map(|(_, a)| a), owned.view()));
        }
        // A run at larger shapes than this session ever ran at (a clip larger than any before
        // it in a warm process; a clip's own windows share one shape, `Anchor::first_window`)
        // gives the arena's free blocks back to the system when it ends. The arena never does
        // otherwise, and blocks cut for the smaller shapes do not fit the larger ones: a stage
        // graph held both sizes of every intermediate (the oracle's fast-preset edit: 160 MB).
        // Smaller shapes are cut from the blocks already there, so a batch of like clips (its
        // sessions kept warm) shrinks it once.
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, i)| i.shape().to_vec()).collect();
        let session_id = {
            use ort::AsPointer;
            self.session.as_ref().expect("present until dropped").ptr() as usize
        };
        // CPU sessions only: their intermediates are in the CPU arena (on CUDA, in the
        // device's, which this does not shrink).
        let shrink = self.provider == Provider::Cpu && larger_than_ever(session_id, shapes);
        let feed = self.feed(inputs)?;
        let kind = self.kind;
        if !matches!(&self.only, Some((name, _)) if name == output) {
            self.only = Some((output.to_string(), selecting(kind, output, false)?));
        }
        let one_off;
        let options = if shrink {
            one_off = selecting(kind, output, true)?;
            &one_off
        } else {
            &self.only.as_ref().expect("made above").1
        };
        let start = Instant::now();
        let session = self.session.as_mut().expect("present until dropped");
        let outputs = session
            .run_with_options(feed, options)
            .map_err(|e| run_error(kind, e.to_string()))?;
        let view = outputs
            .get(output)
            .ok_or_else(|| run_error(kind, format!("no output '{output}'")))?
            .try_extract_array::<f32>()
            .map_err(|e| run_error(kind, format!("output '{output}': {e}")))?;
        // Busy time is the run only, not what `read` does with the output.
        self.busy += start.elapsed();
        self.calls += 1;
        let r = read(lent.take().map(|(_, a)| a), view);
        drop(outputs);
        Ok(r)
    }

    fn run_err(&self, cause: String) -> ModelError {
        run_error(self.kind, cause)
    }

    /// The inputs in the graph's order, converted to what it declares. An f32 input the graph
    /// wants as f32 moves into ONNX Runtime (or is read in place) without a copy.
    fn feed<'a>(
        &self,
        mut inputs: Vec<(&str, Input<'a>)>,
    ) -> Result<Vec<(String, SessionInputValue<'a>)>> {
        let mut feed: Vec<(String, SessionInputValue<'a>)> = Vec::with_capacity(self.inputs.len());
        for d in &self.inputs {
            let Some(at) = inputs.iter().position(|(n, _)| *n == d.name) else {
                return Err(self.run_err(format!("input '{}' was not provided", d.name)));
            };
            let (_, value) = inputs.swap_remove(at);
            let v: SessionInputValue<'a> = match (value, d.elem) {
                (Input::F32(a), TensorElementType::Float16) => {
                    Tensor::from_array(a.mapv(f16::from_f32)).map(Into::into)
                }
                (Input::F32View(a), TensorElementType::Float16) => {
                    Tensor::from_array(a.mapv(f16::from_f32)).map(Into::into)
                }
                (Input::F32View(a), _) if a.is_standard_layout() => {
                    TensorRef::from_array_view(a).map(Into::into)
                }
                (Input::F32View(a), _) => {
                    Tensor::from_array(a.as_standard_layout().into_owned()).map(Into::into)
                }
                (Input::F32(a), _) => Tensor::from_array(a).map(Into::into),
                (Input::Ids(a), TensorElementType::Int32) => {
                    Tensor::from_array(a.mapv(|x| x as i32)).map(Into::into)
                }
                (Input::Ids(a), _) => Tensor::from_array(a).map(Into::into),
            }
            .map_err(|e| self.run_err(format!("input '{}': {e}", d.name)))?;
            feed.push((d.name.clone(), v));
        }
        Ok(feed)
    }

    /// Runs and takes one named output.
    pub fn run_one(&mut self, inputs: Vec<(&str, Input<'_>)>, output: &str) -> Result<ArrayD<f32>> {
        let kind = self.kind;
        self.run(inputs)?
            .remove(output)
            .ok_or_else(|| ModelError::Run {
                network: kind.name().to_string(),
                cause: format!("no output '{output}'"),
            })
    }
}

/// The largest input shapes each session (by its ONNX Runtime handle) has run at, axis by
/// axis. A handle reused after its session is gone inherits a record: at worst one shrink is
/// skipped. Records of dropped sessions are not removed; the map is emptied when it holds
/// [`LARGEST_KEPT`] (a daemon builds sessions for years), costing at most one shrink each.
static LARGEST: std::sync::Mutex<BTreeMap<usize, Vec<Vec<usize>>>> =
    std::sync::Mutex::new(BTreeMap::new());

const LARGEST_KEPT: usize = 4096;

/// Whether `shapes` exceed along some axis what session `id` ran at before (never on its
/// first run), recording them.
fn larger_than_ever(id: usize, shapes: Vec<Vec<usize>>) -> bool {
    let mut largest = crate::sync::lock(&LARGEST);
    let Some(max) = largest.get_mut(&id) else {
        if largest.len() >= LARGEST_KEPT {
            largest.clear();
        }
        largest.insert(id, shapes);
        return false;
    };
    let same_inputs =
        max.len() == shapes.len() && max.iter().zip(&shapes).all(|(m, s)| m.len() == s.len());
    if !same_inputs {
        *max = shapes;
        return false;
    }
    let larger = grew(max, &shapes);
    for (m, s) in max.iter_mut().zip(&shapes) {
        for (m, s) in m.iter_mut().zip(s) {
            *m = (*m).max(*s);
        }
    }
    larger
}

/// Whether some input of `now` is larger along an axis than the same input `before` (inputs
/// in the same order; nothing grew on a first run or when the inputs differ).
fn grew(before: &[Vec<usize>], now: &[Vec<usize>]) -> bool {
    before.len() == now.len()
        && before
            .iter()
            .zip(now)
            .any(|(b, n)| b.len() == n.len() && b.iter().zip(n).any(|(b, n)| n > b))
}

/// Run options computing only `output`; with `shrink`, the CPU arena gives its free blocks
/// back to the system at the end of the run.
fn selecting(kind: Kind, output: &str, shrink: bool) -> Result<RunOptions<HasSelectedOutputs>> {
    let err = |e: ort::Error| run_error(kind, e.to_string());
    let mut options = RunOptions::new()
        .map_err(err)?
        .with_outputs(OutputSelector::no_default().with(output));
    if shrink {
        options
            .set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(err)?;
    }
    Ok(options)
}

/// The external weights file of the network at `path`, when its manifest entry names one.
fn external_data(path: &Path, manifest: &Manifest) -> Option<PathBuf> {
    let entry = manifest.models.values().find(|f| path.ends_with(&f.file))?;
    let data = entry.external_data.as_ref()?;
    Some(path.parent().unwrap_or(Path::new("")).join(data))
}

fn run_error(kind: Kind, cause: String) -> ModelError {
    ModelError::Run {
        network: kind.name().to_string(),
        cause,
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let (Some(key), Some(session)) = (self.warm_key.take(), self.session.take()) {
            super::warm::give_back(key, session, self.provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bundle, Kind};
    use ndarray::{Array, IxDyn};

    #[test]
    fn the_arena_is_shrunk_only_when_an_input_grows() {
        let s = |v: &[&[usize]]| v.iter().map(|d| d.to_vec()).collect::<Vec<_>>();
        let window = |frames| s(&[&[2, 4, frames, 64, 64], &[2]]);
        assert!(!grew(&[], &window(8)), "a first run");
        assert!(
            grew(&window(8), &window(9)),
            "a window with a context frame"
        );
        assert!(!grew(&window(9), &window(9)));
        assert!(!grew(&window(9), &window(5)), "a short last window fits");
        assert!(!grew(&window(9), &s(&[&[2, 4, 9, 64, 64]])), "other inputs");

        // Per session, across jobs: a batch of like clips shrinks once.
        let id = usize::MAX - 7;
        assert!(!larger_than_ever(id, window(8)), "a first run");
        assert!(larger_than_ever(id, window(9)));
        assert!(
            !larger_than_ever(id, window(8)),
            "the next clip's first window"
        );
        assert!(!larger_than_ever(id, window(9)), "and its second");
        assert!(larger_than_ever(id, window(10)));
        assert!(
            !larger_than_ever(id - 1, window(10)),
            "another session's first run"
        );
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn fp16_models_take_and_give_f32() {
        let oracle = Bundle::open(&root().join("models/oracle")).unwrap();
        let path = root().join("tests/data/fp16_vae_decoder.onnx");
        let mut net = Network::load(
            Kind::VaeDecoder,
            &path,
            oracle.manifest(),
            &RuntimeOptions::default(),
        )
        .unwrap();
        let x = Array::from_shape_fn(IxDyn(&[2, 4, 3, 5]), |i| {
            (i[1] as f32) * 0.25 + (i[3] as f32) * 0.125
        });
        let y = net
            .run_one(vec![("latent_sample", Input::F32(x.clone()))], "sample")
            .unwrap();
        assert_eq!(y.shape(), &[2, 3, 3, 5]);
        // These values are exact in fp16.
        assert_eq!(
            y,
            x.slice(ndarray::s![.., 0..3, .., ..]).to_owned().into_dyn()
        );
    }

    /// The oracle UNet computes eps*(x_t, t, c) of CONTEXTDIFF.md §6.2; checking it here proves
    /// the timestep and text states reach the graph as intended.
    #[test]
    fn oracle_unet_is_the_closed_form() {
        let b = Bundle::open(&root().join("models/oracle")).unwrap();
        let opts = RuntimeOptions::default();
        let mut unet = b.load(Kind::Unet, &opts).unwrap();
        let mut text = b.text_encoder(&opts).unwrap();
        let states = text.encode(&["red"]).unwrap().into_dyn();
        let mu = [0.6f64, -0.6, -0.6, 0.0];
        let x = Array::from_shape_fn(IxDyn(&[1, 4, 3, 2, 2]), |i| {
            (i[1] as f32 - 1.5) * 0.7 + i[2] as f32 * 0.1 - i[4] as f32 * 0.2
        });
        for t in [1usize, 250, 981] {
            let eps = unet
                .run_one(
                    vec![
                        ("sample", Input::F32(x.clone())),
                        (
                            "timestep",
                            Input::F32(Array::from_elem(IxDyn(&[1]), t as f32)),
                        ),
                        ("encoder_hidden_states", Input::F32(states.clone())),
                    ],
                    "out_sample",
                )
                .unwrap();
            // scaled_linear betas, abar_t = prod_{s<=t} (1 - beta_s).
            let (b0, b1) = (0.00085f64.sqrt(), 0.012f64.sqrt());
            let abar: f64 = (0..=t)
                .map(|s| {
                    let beta = (b0 + (b1 - b0) * s as f64 / 999.0).powi(2);
                    1.0 - beta
                })
                .product();
            let sigma2 = 0.25;
            let mut worst = 0.0f64;
            for (idx, &v) in x.indexed_iter() {
                let want = (1.0 - abar).sqrt() * (v as f64 - abar.sqrt() * mu[idx[1]])
                    / (abar * sigma2 + 1.0 - abar);
                worst = worst.max((eps[&idx] as f64 - want).abs());
            }
            assert!(worst < 1e-5, "t = {t}: max error {worst}");
        }
    }
}
