#!/usr/bin/env python3
"""Generate the analytic "oracle" model bundles (models/oracle and models/oracle-shifted).

Uses only the `onnx` package and numpy to build the graphs (no torch). The optional check
(`--check`, on by default) runs every ONNX file in onnxruntime and compares it with the
closed-form definitions below; it also loads tokenizer.json with the `tokenizers` package
when that is installed.

Definitions (all exact; see README.md written next to the bundle):

* latent channels C = 4, downsampling d = 1, scale factor 1.0.
* vae_encoder:  sample [N,3,H,W] -> latent_mean [N,4,H,W] = (R, G, B, 0),
                latent_logvar [N,4,H,W] = -30.
* vae_decoder:  latent_sample [N,4,h,w] -> sample [N,3,h,w] = channels 0..2.
* tokenizer:    word level, lower-case, split on whitespace and punctuation, length 16,
                [PAD] = 0, [UNK] = 1, no BOS/EOS.
* text_encoder: input_ids int64 [B,S] -> last_hidden_state [B,S,4] = E[input_ids],
                E[red] = ( .6,-.6,-.6,0), E[green] = (-.6,.6,-.6,0), E[blue] = (-.6,-.6,.6,0),
                E[white] = (.6,.6,.6,0), E[black] = (-.6,-.6,-.6,0), every other row 0.
                Also pooler_output [B,4] = sum over S (= mu_c).
* unet:         mu_c[b] = sum_s encoder_hidden_states[b,s,:]  (4-vector, one value per channel)
                i = int64(clip(timestep, 0, 999))  (truncation toward zero)
                abar = cumprod(1 - linspace(sqrt(0.00085), sqrt(0.012), 1000)^2)
                out_sample = sqrt(1-abar_i) (x - sqrt(abar_i) mu_c) / (abar_i sigma^2 + 1 - abar_i),
                sigma = 0.5.  The two per-timestep factors are float32 tables computed in float64.
* context_adapter: context [B,4,F,h,w] = broadcast over F,h,w of r[b] = M mu_c[b],
                M = [[0,1,0,0],[0,0,1,0],[1,0,0,0],[0,0,0,1]]  (r = (mu_1, mu_2, mu_0, mu_3)),
                inputs latent [B,4,F,h,w] (shape only) and text_states [B,S,4].
* oracle-shifted unet: out_sample = eps* + s r, s = 0.018125 (convention S).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # opset 17 <-> IR 8; onnxruntime 1.31.1 loads IR <= 10

SEQ_LEN = 16
HIDDEN = 4
CHANNELS = 4
SIGMA = 0.5
SCALE = 0.018125
TRAIN_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012

M = np.array(
    [[0, 1, 0, 0],
     [0, 0, 1, 0],
     [1, 0, 0, 0],
     [0, 0, 0, 1]], dtype=np.float64)

COLOR_EMBEDDINGS = {
    "red": (0.6, -0.6, -0.6, 0.0),
    "green": (-0.6, 0.6, -0.6, 0.0),
    "blue": (-0.6, -0.6, 0.6, 0.0),
    "white": (0.6, 0.6, 0.6, 0.0),
    "black": (-0.6, -0.6, -0.6, 0.0),
}

# Order is the id order; ids 0 and 1 are the special tokens. Keep appending only (ids are API).
VOCAB_WORDS = [
    "[PAD]", "[UNK]",
    "red", "green", "blue", "white", "black", "gray", "grey",
    "a", "an", "the", "video", "of", "car", "man", "woman", "person", "people",
    "dog", "cat", "horse", "bird", "boat", "bike", "bicycle", "truck", "train", "road",
    "street", "city", "beach", "sea", "ocean", "wave", "waves", "water", "sky", "snow",
    "forest", "tree", "trees", "mountain", "field", "grass", "sand", "house", "building",
    "surfing", "surfer", "riding", "running", "walking", "driving", "turn", "turning",
    "is", "are", "on", "in", "at", "with", "and", "to", "by", "from", "under", "over",
    "style", "painting", "photo", "cartoon", "anime", "sunny", "night", "day", "winter",
    "summer", "big", "small", "old", "new", "yellow", "orange", "purple", "pink", "brown",
    "silver", "gold", ",", ".", "!", "?", "-", "'",
]


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------
def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def unet_tables() -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(abar), sqrt(1-abar)/(abar sigma^2 + 1 - abar)) as float32 tables of 1000."""
    a = alphas_cumprod()
    sa = np.sqrt(a)
    coef = np.sqrt(1.0 - a) / (a * SIGMA ** 2 + 1.0 - a)
    return sa.astype(np.float32), coef.astype(np.float32)


def embedding_table() -> np.ndarray:
    e = np.zeros((len(VOCAB_WORDS), HIDDEN), dtype=np.float32)
    for i, w in enumerate(VOCAB_WORDS):
        if w in COLOR_EMBEDDINGS:
            e[i] = COLOR_EMBEDDINGS[w]
    return e


# ---------------------------------------------------------------------------------------------
# graph helpers
# ---------------------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits, name, doc):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ctxd-make_oracle",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _f(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _mu_nodes(ehs: str, prefix: str):
    """Nodes computing {prefix}mu5 [B,4,1,1,1] = sum_s ehs[b,s,:]; returns (nodes, inits)."""
    nodes = [
        helper.make_node("ReduceSum", [ehs, f"{prefix}axis1"], [f"{prefix}mu"], keepdims=0),
        helper.make_node("Reshape", [f"{prefix}mu", f"{prefix}shape_b4111"], [f"{prefix}mu5"]),
    ]
    inits = [
        _const(f"{prefix}axis1", np.array([1], dtype=np.int64)),
        _const(f"{prefix}shape_b4111", np.array([-1, CHANNELS, 1, 1, 1], dtype=np.int64)),
    ]
    return nodes, inits


def _adapter_r_nodes(ehs: str, prefix: str):
    """Nodes computing {prefix}r5 [B,4,1,1,1] = M mu_c."""
    nodes, inits = _mu_nodes(ehs, prefix)
    nodes += [
        # r[b, i] = sum_j M[i, j] mu[b, j]  ->  mu [B,4] @ M^T [4,4]
        helper.make_node("MatMul", [f"{prefix}mu", f"{prefix}Mt"], [f"{prefix}r"]),
        helper.make_node("Reshape", [f"{prefix}r", f"{prefix}shape_b4111"], [f"{prefix}r5"]),
    ]
    inits.append(_const(f"{prefix}Mt", M.T.astype(np.float32)))
    return nodes, inits


def build_vae_encoder():
    nodes = [
        # (R, G, B) -> (R, G, B, 0): pad one zero channel at the end of axis 1
        helper.make_node("Pad", ["sample", "pads", "zero"], ["latent_mean"], mode="constant"),
        helper.make_node("Shape", ["latent_mean"], ["mean_shape"]),
        helper.make_node("ConstantOfShape", ["mean_shape"], ["latent_logvar"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [-30.0])),
    ]
    inits = [
        _const("pads", np.array([0, 0, 0, 0, 0, 1, 0, 0], dtype=np.int64)),
        _const("zero", np.array(0.0, dtype=np.float32)),
    ]
    return _model(
        nodes,
        [_f("sample", ["N", 3, "H", "W"])],
        [_f("latent_mean", ["N", CHANNELS, "H", "W"]), _f("latent_logvar", ["N", CHANNELS, "H", "W"])],
        inits, "oracle_vae_encoder",
        "latent_mean = (R, G, B, 0); latent_logvar = -30 (downsampling 1)")


def build_vae_decoder():
    nodes = [helper.make_node("Slice", ["latent_sample", "starts", "ends", "axes"], ["sample"])]
    inits = [
        _const("starts", np.array([0], dtype=np.int64)),
        _const("ends", np.array([3], dtype=np.int64)),
        _const("axes", np.array([1], dtype=np.int64)),
    ]
    return _model(
        nodes,
        [_f("latent_sample", ["N", CHANNELS, "h", "w"])],
        [_f("sample", ["N", 3, "h", "w"])],
        inits, "oracle_vae_decoder", "sample = latent channels 0..2")


def build_text_encoder():
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["last_hidden_state"], axis=0),
        helper.make_node("ReduceSum", ["last_hidden_state", "axis1"], ["pooler_output"], keepdims=0),
    ]
    inits = [_const("embedding", embedding_table()), _const("axis1", np.array([1], dtype=np.int64))]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])],
        [_f("last_hidden_state", ["B", "S", HIDDEN]), _f("pooler_output", ["B", HIDDEN])],
        inits, "oracle_text_encoder",
        "last_hidden_state[b,s] = E[input_ids[b,s]] (colour words only; others zero); "
        "pooler_output = sum over s")


def build_unet(shifted: bool):
    sa, coef = unet_tables()
    nodes, inits = _mu_nodes("encoder_hidden_states", "")
    nodes += [
        helper.make_node("Clip", ["timestep", "t_min", "t_max"], ["t_clipped"]),
        helper.make_node("Cast", ["t_clipped"], ["t_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["sqrt_abar_table", "t_index"], ["sqrt_abar"], axis=0),
        helper.make_node("Gather", ["coef_table", "t_index"], ["coef"], axis=0),
        helper.make_node("Reshape", ["sqrt_abar", "shape_b1111"], ["sqrt_abar5"]),
        helper.make_node("Reshape", ["coef", "shape_b1111"], ["coef5"]),
        helper.make_node("Mul", ["sqrt_abar5", "mu5"], ["mean5"]),
        helper.make_node("Sub", ["sample", "mean5"], ["centered"]),
    ]
    inits += [
        _const("t_min", np.array(0.0, dtype=np.float32)),
        _const("t_max", np.array(float(TRAIN_STEPS - 1), dtype=np.float32)),
        _const("sqrt_abar_table", sa),
        _const("coef_table", coef),
        _const("shape_b1111", np.array([-1, 1, 1, 1, 1], dtype=np.int64)),
    ]
    if shifted:
        rn, ri = _adapter_r_nodes("encoder_hidden_states", "adapter_")
        nodes += [helper.make_node("Mul", ["coef5", "centered"], ["eps_star"])]
        nodes += rn
        nodes += [
            helper.make_node("Mul", ["adapter_r5", "s_scale"], ["s_r"]),
            helper.make_node("Add", ["eps_star", "s_r"], ["out_sample"]),
        ]
        inits += ri + [_const("s_scale", np.array(SCALE, dtype=np.float32))]
        doc = "out_sample = eps*(x_t, t, c) + s * (M mu_c), s = 0.018125 (convention S)"
    else:
        nodes += [helper.make_node("Mul", ["coef5", "centered"], ["out_sample"])]
        doc = "out_sample = eps*(x_t, t, c) of x0 ~ N(mu_c, 0.5^2 I) (convention U)"
    return _model(
        nodes,
        [_f("sample", ["B", CHANNELS, "F", "h", "w"]), _f("timestep", ["B"]),
         _f("encoder_hidden_states", ["B", "S", HIDDEN])],
        [_f("out_sample", ["B", CHANNELS, "F", "h", "w"])],
        inits, "oracle_unet_shifted" if shifted else "oracle_unet", doc)


def build_context_adapter():
    nodes, inits = _adapter_r_nodes("text_states", "")
    nodes += [
        helper.make_node("Shape", ["latent"], ["latent_shape"]),
        helper.make_node("Expand", ["r5", "latent_shape"], ["context"]),
    ]
    return _model(
        nodes,
        [_f("latent", ["B", CHANNELS, "F", "h", "w"]), _f("text_states", ["B", "S", HIDDEN])],
        [_f("context", ["B", CHANNELS, "F", "h", "w"])],
        inits, "oracle_context_adapter",
        "context = broadcast of M mu_c over (F, h, w), M = [[0,1,0,0],[0,0,1,0],[1,0,0,0],[0,0,0,1]]")


def tokenizer_json() -> dict:
    vocab = {w: i for i, w in enumerate(VOCAB_WORDS)}
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
    return {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": SEQ_LEN, "strategy": "LongestFirst",
                       "stride": 0},
        "padding": {"strategy": {"Fixed": SEQ_LEN}, "direction": "Right",
                    "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0,
                    "pad_token": "[PAD]"},
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]")],
        "normalizer": {"type": "Lowercase"},
        # Whitespace = regex \w+|[^\w\s]+ : splits on whitespace and separates punctuation
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }


# ---------------------------------------------------------------------------------------------
# bundle files
# ---------------------------------------------------------------------------------------------
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_toml(name, description, convention, files):
    lines = [
        "format_version = 1",
        f'name = "{name}"',
        f'description = "{description}"',
        "",
        "[text]",
        'tokenizer = "tokenizer.json"',
        f"sequence_length = {SEQ_LEN}",
        f"hidden_size = {HIDDEN}",
        "pad_token_id = 0",
        "",
        "[latent]",
        f"channels = {CHANNELS}",
        "downsampling = 1",
        "scale_factor = 1.0",
        "",
        "[schedule]",
        f"train_steps = {TRAIN_STEPS}",
        'beta_schedule = "scaled_linear"',
        f"beta_start = {BETA_START}",
        f"beta_end = {BETA_END}",
        'prediction_type = "epsilon"',
        "set_alpha_to_one = false",
        "steps_offset = 1",
        "",
        "[context]",
        'k_schedule = "scaled_sqrt_one_minus_abar"',
        f"scale = {SCALE}",
        f'convention = "{convention}"',
    ]
    for key, fname in files:
        lines += ["", f"[models.{key}]", f'file = "{fname}"', f'sha256 = "{files_sha[fname]}"',
                  'dtype = "float32"']
    return "\n".join(lines) + "\n"


files_sha: dict[str, str] = {}

MODEL_FILES = [
    ("text_encoder", "text_encoder.onnx"),
    ("vae_encoder", "vae_encoder.onnx"),
    ("vae_decoder", "vae_decoder.onnx"),
    ("unet", "unet.onnx"),
    ("context_adapter", "context_adapter.onnx"),
]


def write_bundle(out_dir, shifted):
    os.makedirs(out_dir, exist_ok=True)
    models = {
        "text_encoder.onnx": build_text_encoder(),
        "vae_encoder.onnx": build_vae_encoder(),
        "vae_decoder.onnx": build_vae_decoder(),
        "unet.onnx": build_unet(shifted),
        "context_adapter.onnx": build_context_adapter(),
    }
    for fname, model in models.items():
        path = os.path.join(out_dir, fname)
        onnx.save_model(model, path)
        files_sha[fname] = sha256(path)
    tok_path = os.path.join(out_dir, "tokenizer.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    if shifted:
        name, conv = "oracle-shifted", "S"
        desc = ("Analytic oracle, convention S: unet = eps* + s M mu_c (s = 0.018125); "
                "see README.md")
    else:
        name, conv = "oracle", "U"
        desc = "Analytic oracle: x0 ~ N(mu_c, 0.25 I), exact eps* UNet; see README.md"
    with open(os.path.join(out_dir, "bundle.toml"), "w", encoding="utf-8") as f:
        f.write(bundle_toml(name, desc, conv, MODEL_FILES))
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(name, shifted, sha256(tok_path)))


# ---------------------------------------------------------------------------------------------
# predictions (CONTEXTDIFF.md section 6.2), numpy only
# ---------------------------------------------------------------------------------------------
def ddim_timesteps(n):
    step = TRAIN_STEPS // n
    return [i * step + 1 for i in range(n - 1, -1, -1)]


def discrete_ddim_coefficients(n, eps_fn_coeffs, k_scale=0.0, k_final_zero=True):
    """The N-step deterministic DDIM sampler on the oracle is affine in (x_T, mu, r):
    x_out = P x_T + Q mu + R r. Returns (P, Q, R) in float64 (per element, per channel).

    eps_fn_coeffs(t) -> (a, b, c) with eps = a x + b mu + c r.  k_t = k_scale sqrt(1-abar_t)."""
    abar = alphas_cumprod()
    ts = ddim_timesteps(n)
    step = TRAIN_STEPS // n
    vec = np.eye(3)  # rows: coefficients of x_T, mu, r ; state x = vec[0] (as linear form)
    x = vec[0].copy()
    for t in ts:
        tp = t - step
        a_t = abar[t]
        a_p = abar[tp] if tp >= 0 else abar[0]
        k_t = k_scale * np.sqrt(1 - a_t)
        k_p = k_scale * np.sqrt(1 - a_p) if (tp >= 0 or not k_final_zero) else 0.0
        ea, eb, ec = eps_fn_coeffs(t)
        eps = ea * x + eb * vec[1] + ec * vec[2]
        x0 = (x - k_t * vec[2] - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        x = np.sqrt(a_p) * x0 + k_p * vec[2] + np.sqrt(1 - a_p) * eps
    return x  # (P, Q, R)


def eps_star_coeffs(t):
    a = alphas_cumprod()[t]
    d = a * SIGMA ** 2 + 1 - a
    return np.sqrt(1 - a) / d, -np.sqrt(1 - a) * np.sqrt(a) / d, 0.0


def eps_shifted_coeffs(t):
    a, b, _ = eps_star_coeffs(t)
    return a, b, SCALE


def predictions_text():
    abar = alphas_cumprod()
    out = []
    for n in (10, 20, 50, 100):
        t_max = ddim_timesteps(n)[0]
        lam = np.sqrt((1 - abar[t_max]) / abar[t_max])
        S = np.sqrt(SIGMA ** 2 + lam ** 2)
        cont_mean = 1 - SIGMA / S
        cont_std = SIGMA * np.sqrt((1 + lam ** 2) / (SIGMA ** 2 + lam ** 2))
        P, Q, _ = discrete_ddim_coefficients(n, eps_star_coeffs)
        out.append((n, t_max, lam, cont_mean, cont_std, Q, P))
    return out


def readme(name, shifted, tok_sha):
    sa_tab, coef_tab = unet_tables()
    rows = predictions_text()
    pred = "\n".join(
        f"| {n} | {t} | {lam:.6f} | {cm:.6f} | {cs:.6f} | {q:.6f} | {p:.6f} |"
        for (n, t, lam, cm, cs, q, p) in rows)
    _, _, R50 = discrete_ddim_coefficients(50, eps_shifted_coeffs)
    P50s, Q50s, _ = discrete_ddim_coefficients(50, eps_shifted_coeffs)
    Pu, Qu, Ru = discrete_ddim_coefficients(50, eps_star_coeffs, k_scale=SCALE)
    _, _, Ru2 = discrete_ddim_coefficients(50, eps_star_coeffs, k_scale=SCALE, k_final_zero=False)
    gap = SCALE * np.sqrt(1 - alphas_cumprod()[0])
    convention = "S" if shifted else "U"
    unet_def = (
        "out_sample = eps*(x_t, t, c) + s r,  s = 0.018125,  r = M mu_c (broadcast)\n"
        if shifted else "out_sample = eps*(x_t, t, c)\n")
    vocab_list = ", ".join(f"`{w}`={i}" for i, w in enumerate(VOCAB_WORDS))
    return f"""# `{name}` — analytic oracle bundle (convention {convention})

Generated by `models/oracle/make_oracle.py` (onnx + numpy only; no torch). Regenerate and check:

    python models/oracle/make_oracle.py            # writes models/oracle and models/oracle-shifted, then checks
    python models/oracle/make_oracle.py --check-only

The check runs every ONNX file in onnxruntime at several shapes (B = 1, 3; F = 1, 2, 5;
non-square h, w; timesteps including fractional, 0, 999 and out-of-range) and compares with
the float64 formulas below; it prints the max abs error of each file.

Every network here is exact: its correct output is known in closed form, so the Rust sampler
can be tested end to end against formulas (CONTEXTDIFF.md §5, §6).

## Definitions

* Latent: channels C = 4, downsampling d = 1, scale factor 1.0 (latent = pixel grid).
* `vae_encoder.onnx`: `sample` [N,3,H,W] (in [-1,1]) -> `latent_mean` [N,4,H,W] = (R, G, B, 0),
  `latent_logvar` [N,4,H,W] = -30 everywhere (so a sampled latent equals the mean to ~3e-7).
* `vae_decoder.onnx`: `latent_sample` [N,4,h,w] -> `sample` [N,3,h,w] = latent channels 0, 1, 2.
* `tokenizer.json`: Hugging Face `tokenizers` format, `WordLevel` model, `Lowercase` normalizer,
  `Whitespace` pre-tokenizer (regex `\\w+|[^\\w\\s]+`: splits on whitespace and separates
  punctuation), no BOS/EOS, truncation and padding to exactly 16 with `[PAD]` = 0; unknown words
  map to `[UNK]` = 1. Vocabulary (id order): {vocab_list}.
  sha256 of tokenizer.json: `{tok_sha}`.
* `text_encoder.onnx`: `input_ids` int64 [B,S] (S = 16 in practice; any S works) ->
  `last_hidden_state` [B,S,4] with `last_hidden_state[b,s] = E[input_ids[b,s]]`, D = 4:

  | token | E |
  |---|---|
  | red   | ( 0.6, -0.6, -0.6, 0) |
  | green | (-0.6,  0.6, -0.6, 0) |
  | blue  | (-0.6, -0.6,  0.6, 0) |
  | white | ( 0.6,  0.6,  0.6, 0) |
  | black | (-0.6, -0.6, -0.6, 0) |
  | every other token (gray/grey, [PAD], [UNK], ...) | (0, 0, 0, 0) |

  plus `pooler_output` [B,4] = sum over s (= mu_c below). Ids outside the vocabulary are an
  ONNX Runtime error (Gather), so feed only tokenizer output.
* `unet.onnx`: inputs `sample` x_t [B,4,F,h,w] f32, `timestep` f32 [B],
  `encoder_hidden_states` [B,S,4]; output `out_sample` [B,4,F,h,w]:

      mu_c[b]   = sum_s encoder_hidden_states[b, s, :]        (a 4-vector: one value per latent channel,
                                                              broadcast over frames and pixels)
      i         = int64(clip(timestep[b], 0, 999))            (clip first, then cast: truncation toward 0)
      betas     = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2   (scaled_linear)
      abar      = cumprod(1 - betas);  a = abar[i]
      sigma     = 0.5
      eps*      = sqrt(1 - a) (x_t - sqrt(a) mu_c) / (a sigma^2 + 1 - a)
      {unet_def}
  Implemented as `coef[i] * (x_t - sqrt_abar[i] * mu_c)`{" + s r" if shifted else ""} with the two
  1000-entry tables computed in float64 and stored as float32 (e.g. abar[0] = {alphas_cumprod()[0]:.9f},
  abar[999] = {alphas_cumprod()[999]:.9f}; sqrt_abar[981] = {sa_tab[981]:.9f}, coef[981] = {coef_tab[981]:.9f}).
  eps* is the exact noise predictor for data x0 ~ N(mu_c, sigma^2 I).
* `context_adapter.onnx`: inputs `latent` [B,4,F,h,w] (only its shape is used) and
  `text_states` [B,S,4]; output `context` [B,4,F,h,w] = broadcast over (F,h,w) of

      r[b] = M mu_c[b],   M = [[0,1,0,0],
                               [0,0,1,0],
                               [1,0,0,0],
                               [0,0,0,1]]      i.e. r = (mu_1, mu_2, mu_0, mu_3)

  A text-only adapter (no timestep, no image input), so `source` and `x0_pred` context modes
  give the same r.
* `bundle.toml`: schedule scaled_linear 0.00085..0.012, 1000 steps, epsilon, `set_alpha_to_one =
  false`, `steps_offset = 1`; context `k_schedule = "scaled_sqrt_one_minus_abar"`, scale 0.018125,
  convention {convention}.

The two bundles `oracle` and `oracle-shifted` differ only in `unet.onnx` (oracle-shifted adds
`s r`, computed inside the UNet from `encoder_hidden_states`) and in `bundle.toml`
(`convention = "U"` vs `"S"`, name, description, the unet hash). All other files are identical.

## Predictions (CONTEXTDIFF.md §6)

Examples of mu_c: "a red car" -> (0.6, -0.6, -0.6, 0); "a blue car" -> (-0.6, -0.6, 0.6, 0);
"red and white" -> (1.2, 0, 0, 0); "a gray car" or "" -> (0, 0, 0, 0).
Decoded colour of a latent equal to mu_c: red prompt -> RGB (0.6, -0.6, -0.6) in [-1,1].

### §6.1 identity (S vs U)
With `k_t = s sqrt(1 - abar_t)`, `eta = 0`: contextual DDIM (context r from `context_adapter.onnx`,
any context mode, since r does not depend on the latent) with convention U on `oracle` equals
plain DDIM (context off) on `oracle-shifted`, for sampling and inversion, to float precision,
because eps_S - s r = eps* exactly. Per element both are `P x_T + Q mu_c + R r`; for N = 50:

* oracle-shifted, plain DDIM: P = {P50s:.9f}, Q = {Q50s:.9f}, R = {R50:.9f}
* oracle, contextual U, `k` at the final alpha = s sqrt(1 - abar[0]): R = {Ru2:.9f} (identical)
* oracle, contextual U, `k_prev = 0` at the last step (CONTEXTDIFF.md §2 read literally):
  P = {Pu:.9f}, Q = {Qu:.9f}, R = {Ru:.9f}

**Caveat found while building this bundle:** the identity is exact only when the sampler uses
`k_prev = s sqrt(1 - abar_prev)` for the final step too (abar_prev = abar[0], the "final
alpha"), and likewise `k_cur = s sqrt(1 - abar[0])` for the first inversion step. With
`k = 0` there, the last DDIM step differs by `s sqrt(1 - abar[0]) r = {gap:.4e} r` (and the
first inversion step by the same amount divided by sqrt(abar[0]) inside x0_hat). A Rust test
of §6.1 must either use the final-alpha k or allow that gap.

### §6.2 oracle sampling (plain DDIM, eta = 0, context off, on `oracle`)
With u = x / sqrt(abar), lambda = sqrt((1 - abar)/abar), exact DDIM is du/dlambda = eps*, and

    u(lambda) - mu_c = (u(lambda_0) - mu_c) sqrt(sigma^2 + lambda^2) / sqrt(sigma^2 + lambda_0^2)

* Sampling from x_T ~ N(0, I): per-element mean `mu_c (1 - sigma/S)`, std
  `sigma sqrt((1 + lambda_T^2)/(sigma^2 + lambda_T^2))`, `S = sqrt(sigma^2 + lambda_T^2)`
  (continuous time, ignoring the final-alpha term; ≈ mu_c and ≈ sigma).
* Inversion then sampling with the same prompt reconstructs x0.
* Inversion with the source prompt then sampling with the target prompt:
  `x0' = x0 - mu_src + mu_tgt + (mu_src - mu_tgt) sigma / S` (up to the lambda_0 term).

The discrete N-step DDIM sampler (timesteps `t_i = i*(1000/N) + 1`, final alpha abar[0]) is
exactly affine per element: `x_out = P x_T + Q mu_c` (computed in float64 by this script;
so mean = Q mu_c, std = P for x_T ~ N(0, I)):

| N | t_max | lambda_T | continuous mean / mu_c = 1 - sigma/S | continuous std | discrete Q (mean / mu_c) | discrete P (std) |
|---|---|---|---|---|---|---|
{pred}
"""


# ---------------------------------------------------------------------------------------------
# check against formulas in onnxruntime
# ---------------------------------------------------------------------------------------------
def check(out_dirs):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    abar = alphas_cumprod()
    E = embedding_table().astype(np.float64)
    worst = {}

    def sess(path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def record(key, got, want):
        err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
        worst[key] = max(worst.get(key, 0.0), err)

    shapes = [(1, 1, 8, 8), (3, 2, 6, 10), (1, 5, 4, 7), (3, 5, 3, 5), (2, 1, 1, 1)]
    for d in out_dirs:
        shifted = d.rstrip("/").endswith("shifted")
        enc, dec = sess(f"{d}/vae_encoder.onnx"), sess(f"{d}/vae_decoder.onnx")
        te, un = sess(f"{d}/text_encoder.onnx"), sess(f"{d}/unet.onnx")
        ad = sess(f"{d}/context_adapter.onnx")
        for si, (b, f, h, w) in enumerate(shapes):
            img = rng.uniform(-1, 1, (b * f, 3, h * 2, w * 3)).astype(np.float32)
            mean, logvar = enc.run(None, {"sample": img})
            want_mean = np.concatenate([img, np.zeros_like(img[:, :1])], 1).astype(np.float64)
            record(f"{d}/vae_encoder.onnx", mean, want_mean)
            record(f"{d}/vae_encoder.onnx", logvar, np.full(want_mean.shape, -30.0))
            lat = rng.normal(size=(b * f, 4, h, w)).astype(np.float32)
            (rgb,) = dec.run(None, {"latent_sample": lat})
            record(f"{d}/vae_decoder.onnx", rgb, lat[:, :3].astype(np.float64))

            ids = rng.integers(0, len(VOCAB_WORDS), (b, SEQ_LEN)).astype(np.int64)
            ids[:, -3:] = 0
            ehs, pooled = te.run(None, {"input_ids": ids})
            record(f"{d}/text_encoder.onnx", ehs, E[ids])
            record(f"{d}/text_encoder.onnx", pooled, E[ids].sum(1))

            x = rng.normal(size=(b, 4, f, h, w)).astype(np.float32)
            ts = rng.uniform(0, 999.99, b).astype(np.float32)
            ts[0] = [0.0, 999.0, 981.0, 1.0, 500.7][si]
            if b > 1:
                ts[-1] = [-5.0, 1200.0, 3.99, 998.5, 20.0][si]
            (eps,) = un.run(None, {"sample": x, "timestep": ts,
                                   "encoder_hidden_states": ehs})
            mu = ehs.astype(np.float64).sum(1)  # [B,4]
            idx = np.clip(ts.astype(np.float64), 0, 999).astype(np.int64)
            a = abar[idx][:, None, None, None, None]
            mu5 = mu[:, :, None, None, None]
            want = np.sqrt(1 - a) * (x - np.sqrt(a) * mu5) / (a * SIGMA ** 2 + 1 - a)
            r5 = (mu @ M.T)[:, :, None, None, None]
            if shifted:
                want = want + SCALE * r5
            record(f"{d}/unet.onnx", eps, want)
            (ctx,) = ad.run(None, {"latent": x, "text_states": ehs})
            record(f"{d}/context_adapter.onnx", ctx, np.broadcast_to(r5, x.shape))

        # the colour table through the real tokenizer, when `tokenizers` is installed
        try:
            from tokenizers import Tokenizer
        except ImportError:
            print("  (tokenizers not installed: tokenizer.json not loaded)")
        else:
            tok = Tokenizer.from_file(f"{d}/tokenizer.json")
            enc_ = tok.encode("A RED car, driving; on the road!")
            assert len(enc_.ids) == SEQ_LEN, enc_.ids
            want_tokens = ["a", "red", "car", ",", "driving", "[UNK]", "on", "the", "road", "!"]
            got_tokens = [VOCAB_WORDS[i] for i in enc_.ids[:len(want_tokens)]]
            assert got_tokens == want_tokens, got_tokens
            assert enc_.ids[len(want_tokens):] == [0] * (SEQ_LEN - len(want_tokens)), enc_.ids
            long = tok.encode(" ".join(["red"] * 40))
            assert long.ids == [VOCAB_WORDS.index("red")] * SEQ_LEN
            ehs, _ = te.run(None, {"input_ids": np.array([enc_.ids], dtype=np.int64)})
            assert np.allclose(ehs.sum(1), [[0.6, -0.6, -0.6, 0]], atol=1e-7)
            print(f"  {d}/tokenizer.json: ok ('A RED car, driving; on the road!' -> {enc_.ids})")

        # hashes in bundle.toml are those of the files
        import tomllib
        with open(f"{d}/bundle.toml", "rb") as fh:
            manifest = tomllib.load(fh)
        for key, spec in manifest["models"].items():
            assert sha256(f"{d}/{spec['file']}") == spec["sha256"], (d, key)
            m = onnx.load(f"{d}/{spec['file']}")
            assert m.ir_version <= 10 and m.opset_import[0].version == OPSET

    ok = True
    for key in sorted(worst):
        status = "ok" if worst[key] <= 1e-6 else "FAIL"
        ok &= status == "ok"
        print(f"  max abs error {worst[key]:.3e}  {status}  {key}")
    return ok


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    models_dir = os.path.dirname(here)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=here, help="oracle bundle folder (default: this folder)")
    p.add_argument("--out-shifted", default=os.path.join(models_dir, "oracle-shifted"))
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--check-only", action="store_true")
    args = p.parse_args(argv)
    if not args.check_only:
        write_bundle(args.out, shifted=False)
        write_bundle(args.out_shifted, shifted=True)
        print(f"wrote {args.out} and {args.out_shifted}")
    if args.no_check:
        return 0
    ok = check([args.out, args.out_shifted])
    print("oracle check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
