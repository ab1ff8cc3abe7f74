"""Independent numpy + onnxruntime reference of ctxd's sampler (models/reference/SPEC.md).

Every function returns the full trajectory `[steps + 1, B, C, F, h, w]` (float32): the start
latent and the latent after every step. Arithmetic inside a step is float64; the state is
rounded to float32 after every step (that is what the trajectory stores and what the next step
reads), and every network sees float32 inputs. Section references: "SPEC" = SPEC.md next to this
file, "CD" = /work/shared/CONTEXTDIFF.md (copied in the repository as the design note).

No torch here on purpose: this must stay independent of the exporter and of the Rust code.
"""
from __future__ import annotations

import math
import os
import tomllib

import numpy as np
import onnxruntime as ort

MODES = ("off", "source", "x0_pred")
FINAL_K = ("zero", "final_alpha")
K_SCHEDULES = ("scaled_sqrt_one_minus_abar", "one_minus_sqrt_abar")
SPACINGS = ("leading", "trailing")
SCHEDULE_KEYS = ("train_steps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                 "set_alpha_to_one", "steps_offset", "rescale_zero_terminal_snr",
                 "timestep_spacing")


# --------------------------------------------------------------------------------------------
# Schedule (SPEC "Schedule", CD §2)
# --------------------------------------------------------------------------------------------
def make_betas(beta_schedule: str, beta_start: float, beta_end: float, T: int) -> np.ndarray:
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        # diffusers' betas_for_alpha_bar (cosine), each beta capped at 0.999
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999)
                         for i in range(T)], dtype=np.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """diffusers' rescale_zero_terminal_snr (Lin et al. 2023, Alg. 1), float64: sqrt(abar)
    shifted so its last value is 0 and scaled so its first is unchanged; betas recomputed."""
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar ** 2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class Schedule:
    """abar table, timesteps, and the context scale k (SPEC "Schedule", "Context scale k")."""

    def __init__(self, sched: dict, ctx: dict, k_schedule: str | None = None,
                 final_k: str = "zero"):
        unknown = sorted(set(sched) - set(SCHEDULE_KEYS))
        if unknown:
            raise ValueError(f"unknown [schedule] key(s) {unknown}")
        self.T = int(sched["train_steps"])
        self.prediction_type = sched.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}")
        self.rescale = sched.get("rescale_zero_terminal_snr", False)
        if not isinstance(self.rescale, bool):
            raise ValueError(f"schedule.rescale_zero_terminal_snr must be true or false, "
                             f"not {self.rescale!r}")
        if self.rescale and self.prediction_type != "v_prediction":
            # abar[T-1] = 0: x0 = (y - sqrt(1 - abar_t) eps) / sqrt(abar_t) would divide by 0
            raise ValueError("schedule.rescale_zero_terminal_snr = true needs prediction_type "
                             "= \"v_prediction\" (abar[T-1] becomes 0)")
        if self.rescale and self.T < 2:
            raise ValueError("schedule.rescale_zero_terminal_snr = true needs train_steps >= 2")
        self.spacing = sched.get("timestep_spacing", "leading")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown schedule.timestep_spacing {self.spacing!r} "
                             f"(expected one of {SPACINGS})")
        self.betas = make_betas(sched["beta_schedule"], sched["beta_start"], sched["beta_end"],
                                self.T)
        if self.rescale:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.abar = np.cumprod(1.0 - self.betas)
        self.final_abar = 1.0 if sched.get("set_alpha_to_one", False) else float(self.abar[0])
        self.offset = int(sched.get("steps_offset", 0))  # leading spacing only
        self.k_schedule = k_schedule or ctx["k_schedule"]
        if self.k_schedule not in K_SCHEDULES:
            raise ValueError(f"unknown k_schedule {self.k_schedule!r}")
        self.k_scale = float(ctx.get("scale", 1.0))
        if final_k not in FINAL_K:
            raise ValueError(f"unknown final_k {final_k!r}")
        self.final_k = final_k

    def abar_of(self, t: int) -> float:
        return float(self.abar[t]) if t >= 0 else self.final_abar

    def k_of_abar(self, a: float) -> float:
        if self.k_schedule == "scaled_sqrt_one_minus_abar":
            return self.k_scale * math.sqrt(1.0 - a)
        return 1.0 - math.sqrt(a)  # one_minus_sqrt_abar

    def k_at(self, t: int) -> float:
        """k at timestep t; t < 0 is the clean end, where the final_k rule applies."""
        if t >= 0:
            return self.k_of_abar(self.abar_of(t))
        return 0.0 if self.final_k == "zero" else self.k_of_abar(self.final_abar)

    def ddim_timesteps(self, n: int, strength: float = 1.0) -> list[int]:
        """Descending. leading: t_i = i * (T // N) + offset, i = N-1 .. 0; trailing (diffusers'
        DDIMScheduler): round(arange(T, 0, -T/N)) - 1, offset ignored. The step from t goes to
        t - T // N either way. With `strength` < 1 only the ceil(strength * N) least noisy
        (ctxd's Schedule::with_strength; the tolerance keeps 0.7 * 10 at 7)."""
        ts = self._ddim_timesteps(n)
        keep = min(max(math.ceil(strength * n - 1e-9), 1), n)
        return ts[n - keep:]

    def _ddim_timesteps(self, n: int) -> list[int]:
        if not 1 <= n <= self.T:
            raise ValueError(f"steps must be between 1 and {self.T} (got {n})")
        if self.spacing == "trailing":
            # float rounding makes this arange N + 1 long for some N (61, 103, ... at T = 1000);
            # its extra element (~0, t = -1) is dropped (diffusers would run it)
            ts = np.round(np.arange(self.T, 0, -self.T / n))[:n].astype(np.int64) - 1
            return [int(t) for t in ts]
        ratio = self.T // n
        ts = [i * ratio + self.offset for i in range(n - 1, -1, -1)]
        if ts[0] >= self.T:
            # e.g. N = T with steps_offset = 1 would ask for t = T (SPEC does not say; refuse).
            raise ValueError(f"N = {n} gives timestep {ts[0]} >= train_steps {self.T}")
        return ts


# --------------------------------------------------------------------------------------------
# Bundle: tokenizer, text encoder, UNet, context adapter (onnxruntime, CPU, 1 thread)
# --------------------------------------------------------------------------------------------
MODELS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _session(path: str, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # 1: deterministic reductions (--check compares to 1e-6)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class Bundle:
    def __init__(self, name_or_path: str, threads: int = 1):
        """`threads` > 1 runs the UNet faster, for callers that need no parity with the goldens."""
        path = name_or_path if os.path.isdir(name_or_path) else os.path.join(MODELS_DIR,
                                                                             name_or_path)
        self.path = path
        with open(os.path.join(path, "bundle.toml"), "rb") as f:
            self.toml = tomllib.load(f)
        self.convention = self.toml["context"].get("convention", "U")
        if self.convention not in ("U", "S"):
            raise ValueError(f"unknown convention {self.convention!r}")
        m = self.toml["models"]
        self._unet = _session(os.path.join(path, m["unet"]["file"]), threads)
        self._text = _session(os.path.join(path, m["text_encoder"]["file"]))
        self._adapter = (_session(os.path.join(path, m["context_adapter"]["file"]))
                         if "context_adapter" in m else None)
        self.adapter_inputs = ([i.name for i in self._adapter.get_inputs()]
                               if self._adapter else [])
        # Tokenizer: padding to sequence_length with pad_token_id, truncation at that length,
        # special tokens as the file's post-processor adds them (SPEC "Golden files", the task).
        from tokenizers import Tokenizer
        t = self.toml["text"]
        self.seq_len, pad_id = int(t["sequence_length"]), int(t["pad_token_id"])
        self.tokenizer = Tokenizer.from_file(os.path.join(path, t["tokenizer"]))
        self.tokenizer.enable_padding(length=self.seq_len, pad_id=pad_id,
                                      pad_token=self.tokenizer.id_to_token(pad_id))
        self.tokenizer.enable_truncation(max_length=self.seq_len)
        self._states_cache: dict[str, np.ndarray] = {}

    def schedule(self, k_schedule=None, final_k="zero", schedule=None) -> Schedule:
        """The bundle's [schedule], with the keys of `schedule` (a dict) overriding it."""
        return Schedule({**self.toml["schedule"], **(schedule or {})}, self.toml["context"],
                        k_schedule, final_k)

    def token_ids(self, prompt: str) -> np.ndarray:
        ids = self.tokenizer.encode(prompt).ids[: self.seq_len]
        return np.array([ids], dtype=np.int64)

    def text_states(self, prompt: str) -> np.ndarray:
        """[1, S, D] float32 last_hidden_state of one prompt (encoded alone, B = 1)."""
        if prompt not in self._states_cache:
            out = self._text.run(["last_hidden_state"], {"input_ids": self.token_ids(prompt)})
            self._states_cache[prompt] = out[0].astype(np.float32)
        return self._states_cache[prompt]

    def unet(self, x: np.ndarray, t: int, states: np.ndarray) -> np.ndarray:
        """out_sample (float64) for x [B,C,F,h,w], timestep float(t) per row, states [B,S,D]."""
        feeds = {"sample": x.astype(np.float32),
                 "timestep": np.full((x.shape[0],), float(t), dtype=np.float32),
                 "encoder_hidden_states": states.astype(np.float32)}
        return self._unet.run(None, feeds)[0].astype(np.float64)

    def adapter(self, latent: np.ndarray, states: np.ndarray, t: int) -> np.ndarray:
        """r (float64) from the adapter, feeding exactly the inputs it declares (SPEC "Context r")."""
        feeds = {}
        for name in self.adapter_inputs:
            if name == "latent":
                feeds[name] = latent.astype(np.float32)
            elif name == "text_states":
                feeds[name] = states.astype(np.float32)
            elif name == "timestep":
                feeds[name] = np.full((latent.shape[0],), float(t), dtype=np.float32)
            elif name == "image_embeds":
                raise NotImplementedError(
                    "context adapter declares image_embeds (VAE decode + CLIP image encoder); "
                    "no committed bundle does and the reference does not implement it")
            else:
                raise ValueError(f"context adapter declares an unknown input {name!r}")
        return self._adapter.run(["context"], feeds)[0].astype(np.float64)


# --------------------------------------------------------------------------------------------
# Shared pieces: prompts/guidance, context r, model outputs
# --------------------------------------------------------------------------------------------
def prompt_rows(bundle: Bundle, prompt, B: int) -> np.ndarray:
    """[B, S, D] states: one prompt for every row, or a list of B prompts, one per row."""
    if isinstance(prompt, str):
        return np.repeat(bundle.text_states(prompt), B, axis=0)
    if len(prompt) != B:
        raise ValueError(f"{len(prompt)} prompts for a batch of {B}")
    return np.concatenate([bundle.text_states(p) for p in prompt])


class _Run:
    """What one sampling/inversion run needs: schedule, prompt states, guidance, context."""

    def __init__(self, bundle: Bundle, x0_source, prompt, *, guidance=1.0, negative=None,
                 mode="source", final_k="zero", k_schedule=None, schedule=None):
        if mode not in MODES:
            raise ValueError(f"unknown context mode {mode!r}")
        self.b = bundle
        self.sch = bundle.schedule(k_schedule, final_k, schedule)
        self.w = float(guidance)
        self.B = x0_source.shape[0]
        # conditional states, one row per latent batch row (a list: one prompt per row)
        self.cond = prompt_rows(bundle, prompt, self.B)
        # uncond = negative prompt, or the empty prompt (SPEC "Model outputs", CD §2)
        self.uncond = (prompt_rows(bundle, negative if negative is not None else "", self.B)
                       if self.w != 1.0 else None)
        # Convention S: r = 0, adapter never called (SPEC "Context scale k").
        self.mode = "off" if bundle.convention == "S" else mode
        self.x0_source = np.asarray(x0_source, dtype=np.float32)
        self.r_fixed = None
        if self.mode == "off":
            self.r_fixed = np.zeros(x0_source.shape, dtype=np.float64)
        elif self.mode == "source":
            # one call per run: latent = x0_source, timestep = 0, cond prompt's states
            self.r_fixed = bundle.adapter(self.x0_source, self.cond, 0)
        self.x0_est = self.x0_source  # x0_pred: the previous step's x0_hat (x0_source first)

    def r(self, t: int) -> np.ndarray:
        """Context r for the step at timestep t (SPEC "Context r")."""
        if self.r_fixed is not None:
            return self.r_fixed
        return self.b.adapter(self.x0_est.astype(np.float32), self.cond, t)  # x0_pred

    def eps_x0(self, x, t, r):
        """(eps_hat, x0_hat) in float64 for the state x at timestep t (SPEC "Model outputs").

        Guidance combines the raw outputs; v_prediction converts with abar_t and
        y = x - k_t r, t being the timestep the model is evaluated at (also while inverting).
        """
        if self.w == 1.0:
            out = self.b.unet(x, t, self.cond)
        else:  # one call, batch [uncond, cond]
            both = self.b.unet(np.concatenate([x, x]), t,
                               np.concatenate([self.uncond, self.cond]))
            out_u, out_c = both[: self.B], both[self.B:]
            out = out_u + self.w * (out_c - out_u)
        a = self.sch.abar_of(t)
        y = x.astype(np.float64) - self.sch.k_at(t) * r
        if self.sch.prediction_type == "v_prediction":
            eps = math.sqrt(a) * out + math.sqrt(1 - a) * y
            x0 = math.sqrt(a) * y - math.sqrt(1 - a) * out
        else:
            eps = out
            x0 = (y - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return eps, x0


def _check_noise(noise, steps, shape, needed):
    if not needed:
        return None
    if noise is None:
        raise ValueError("noise [steps, B, C, F, h, w] is required (eta > 0 or DDPM)")
    noise = np.asarray(noise, dtype=np.float32)
    if noise.shape != (steps,) + tuple(shape):
        raise ValueError(f"noise shape {noise.shape} != {(steps,) + tuple(shape)}")
    return noise


# --------------------------------------------------------------------------------------------
# DDIM sampling (SPEC "DDIM step", CD §2)
# --------------------------------------------------------------------------------------------
def ddim_sample(bundle, start, x0_source, prompt, *, steps, eta=0.0, guidance=1.0,
                negative=None, mode="source", final_k="zero", k_schedule=None, noise=None,
                schedule=None, strength=1.0):
    run = _Run(bundle, x0_source, prompt, guidance=guidance, negative=negative, mode=mode,
               final_k=final_k, k_schedule=k_schedule, schedule=schedule)
    sch = run.sch
    ratio = sch.T // steps
    noise = _check_noise(noise, steps, start.shape, eta > 0)
    x = np.asarray(start, dtype=np.float32)
    traj = [x]
    for i, t in enumerate(sch.ddim_timesteps(steps, strength)):
        prev = t - ratio
        a_t, a_p = sch.abar_of(t), sch.abar_of(prev)
        k_p = sch.k_at(prev)  # final_k rule when prev < 0
        r = run.r(t)
        eps, x0 = run.eps_x0(x, t, r)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        xp = math.sqrt(a_p) * x0 + k_p * r + math.sqrt(1 - a_p - sigma ** 2) * eps
        if eta > 0:
            xp = xp + sigma * noise[i].astype(np.float64)
        run.x0_est = x0
        x = xp.astype(np.float32)
        traj.append(x)
    return np.stack(traj)


# --------------------------------------------------------------------------------------------
# DDIM inversion (SPEC "DDIM inversion", CD §3): x0 -> x_T, timesteps ascending
# --------------------------------------------------------------------------------------------
def ddim_invert(bundle, start, x0_source, prompt, *, steps, guidance=1.0, negative=None,
                mode="source", final_k="zero", k_schedule=None, schedule=None, strength=1.0):
    run = _Run(bundle, x0_source, prompt, guidance=guidance, negative=negative, mode=mode,
               final_k=final_k, k_schedule=k_schedule, schedule=schedule)
    sch = run.sch
    ratio = sch.T // steps
    x = np.asarray(start, dtype=np.float32)
    traj = [x]
    for t in reversed(sch.ddim_timesteps(steps, strength)):
        cur = t - ratio
        a_c, a_t = sch.abar_of(cur), sch.abar_of(t)
        k_c, k_t = sch.k_at(cur), sch.k_at(t)  # final_k rule when cur < 0
        r = run.r(t)
        eps, _ = run.eps_x0(x, t, r)  # model at t (the upper end) on the current x
        x0 = (x.astype(np.float64) - k_c * r - math.sqrt(1 - a_c) * eps) / math.sqrt(a_c)
        xn = math.sqrt(a_t) * x0 + k_t * r + math.sqrt(1 - a_t) * eps
        run.x0_est = x0
        x = xn.astype(np.float32)
        traj.append(x)
    return np.stack(traj)


# --------------------------------------------------------------------------------------------
# DDPM ancestral sampling (SPEC "DDPM ancestral step", CD §4): t = T-1 .. 0, no offset
# --------------------------------------------------------------------------------------------
def ddpm_sample(bundle, start, x0_source, prompt, *, noise, guidance=1.0, negative=None,
                mode="source", final_k="zero", k_schedule=None, schedule=None):
    run = _Run(bundle, x0_source, prompt, guidance=guidance, negative=negative, mode=mode,
               final_k=final_k, k_schedule=k_schedule, schedule=schedule)
    sch = run.sch
    noise = _check_noise(noise, sch.T, start.shape, True)
    x = np.asarray(start, dtype=np.float32)
    traj = [x]
    for i, t in enumerate(range(sch.T - 1, -1, -1)):
        a_t, a_p = sch.abar_of(t), sch.abar_of(t - 1)
        beta = 1 - a_t / a_p
        k_t, k_p = sch.k_at(t), sch.k_at(t - 1)
        r = run.r(t)
        _, x0 = run.eps_x0(x, t, r)
        y = x.astype(np.float64) - k_t * r
        c1 = math.sqrt(a_p) * beta / (1 - a_t)
        c2 = math.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)
        xp = c1 * x0 + c2 * y + k_p * r
        if t - 1 >= 0:
            xp = xp + math.sqrt(beta * (1 - a_p) / (1 - a_t)) * noise[i].astype(np.float64)
        run.x0_est = x0
        x = xp.astype(np.float32)
        traj.append(x)
    return np.stack(traj)


# --------------------------------------------------------------------------------------------
# Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024; SPEC "Edit-friendly
# inversion"): each timestep's latent drawn on its own from the forward process, and each
# sampling step's residual against the eta = 1 DDIM mean under the source prompt.
# --------------------------------------------------------------------------------------------
def _eta1_mean(run, x, t, prev):
    """The eta = 1 DDIM step's mean from x at t to prev (float32), and x0_hat."""
    sch = run.sch
    a_t, a_p = sch.abar_of(t), sch.abar_of(prev)
    r = run.r(t)
    eps, x0 = run.eps_x0(x, t, r)
    sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    mean = (math.sqrt(a_p) * x0 + sch.k_at(prev) * r
            + math.sqrt(max(1 - a_p - sigma ** 2, 0.0)) * eps)
    return mean.astype(np.float32), x0


def friendly_invert(bundle, x0, x0_source, prompt, *, steps, noise, guidance=1.0,
                    negative=None, mode="source", final_k="zero", k_schedule=None,
                    schedule=None, strength=1.0):
    """[x0, x_t1, ..., x_tn (ascending), d_0, ..., d_{n-1} (sampling order)] stacked.

    noise[i - 1] draws x at the i-th least noisy timestep; d_j = x_prev - mean of step j.
    """
    run = _Run(bundle, x0_source, prompt, guidance=guidance, negative=negative, mode=mode,
               final_k=final_k, k_schedule=k_schedule, schedule=schedule)
    sch = run.sch
    ratio = sch.T // steps
    ts = sch.ddim_timesteps(steps, strength)
    n = len(ts)
    noise = _check_noise(noise, n, x0.shape, True)
    x0 = np.asarray(x0, dtype=np.float32)
    # the forward process's bias: r of the clean source at t = 0 (zero with the context off)
    r0 = (np.zeros(x0.shape) if run.mode == "off"
          else bundle.adapter(run.x0_source, run.cond, 0))
    xs = [x0]
    for i in range(1, n + 1):
        t = ts[n - i]
        a = sch.abar_of(t)
        k = 0.0 if run.mode == "off" else sch.k_at(t)
        x = (math.sqrt(a) * x0.astype(np.float64) + k * r0
             + math.sqrt(1 - a) * noise[i - 1].astype(np.float64))
        xs.append(x.astype(np.float32))
    res = []
    for j, t in enumerate(ts):
        mean, x0_hat = _eta1_mean(run, xs[n - j], t, t - ratio)
        run.x0_est = x0_hat
        res.append(xs[n - j - 1] - mean)
    return np.stack(xs + res)


def friendly_edit(bundle, start, x0_source, prompt, *, steps, residuals, guidance=1.0,
                  negative=None, mode="source", final_k="zero", k_schedule=None,
                  schedule=None, strength=1.0):
    """Sampling at eta = 1 that adds residuals[i] after step i instead of fresh noise."""
    run = _Run(bundle, x0_source, prompt, guidance=guidance, negative=negative, mode=mode,
               final_k=final_k, k_schedule=k_schedule, schedule=schedule)
    sch = run.sch
    ratio = sch.T // steps
    ts = sch.ddim_timesteps(steps, strength)
    residuals = _check_noise(residuals, len(ts), start.shape, True)
    x = np.asarray(start, dtype=np.float32)
    traj = [x]
    for i, t in enumerate(ts):
        mean, x0_hat = _eta1_mean(run, x, t, t - ratio)
        run.x0_est = x0_hat
        x = mean + residuals[i]
        traj.append(x)
    return np.stack(traj)


def run_op(bundle, op, start, x0_source, prompt, *, steps, eta=0.0, guidance=1.0,
           negative=None, mode="source", final_k="zero", k_schedule=None, noise=None,
           schedule=None):
    """Dispatch one golden-file operation ("invert" | "sample" | "ddpm" | "friendly" |
    "friendly_edit"; for the last, `noise` holds the residuals); `schedule` overrides keys of
    the bundle's [schedule]."""
    kw = dict(guidance=guidance, negative=negative, mode=mode, final_k=final_k,
              k_schedule=k_schedule, schedule=schedule)
    if op == "invert":
        if eta != 0:
            raise ValueError("inversion is deterministic (eta = 0)")
        return ddim_invert(bundle, start, x0_source, prompt, steps=steps, **kw)
    if op == "sample":
        return ddim_sample(bundle, start, x0_source, prompt, steps=steps, eta=eta,
                           noise=noise, **kw)
    if op == "friendly":
        return friendly_invert(bundle, start, x0_source, prompt, steps=steps, noise=noise, **kw)
    if op == "friendly_edit":
        return friendly_edit(bundle, start, x0_source, prompt, steps=steps, residuals=noise,
                             **kw)
    if op == "ddpm":
        if steps != bundle.schedule(schedule=schedule).T:
            raise ValueError("ddpm runs every training step (steps = train_steps)")
        return ddpm_sample(bundle, start, x0_source, prompt, noise=noise, **kw)
    raise ValueError(f"unknown op {op!r}")
