"""The demo domain: short clips of coloured shapes moving over plain or textured backgrounds,
with captions from a small grammar. Everything the trained bundle knows comes from here.

A clip is a dict of labels (see `sample_clip`) rendered by `render_clip` into uint8 frames
[F, H, W, 3]. Rendering is anti-aliased (supersampled) and exactly reproducible from the labels,
so the held-out set, the training set and the demo clip all come from one seeded generator.

The palette and the caption grammar are also written into the held-out set's JSON
(`heldout.json`), which is what the Rust analyser (src/quality) reads: nothing in Rust is
hard-coded to this file's numbers.
"""
from __future__ import annotations

import math

import numpy as np

# Object colours and background colours are far apart in RGB (>= 90) so that a pixel's
# nearest palette entry says which it is, even after lossy encoding.
OBJECT_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (150, 55, 195),
}
BACKGROUND_COLOURS = {
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
    "black": (28, 28, 28),
    "beige": (200, 180, 135),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped", "checkered")
TEXTURE_AMPLITUDE = 16   # +- intensity of stripes and checks (0..255 scale)
TEXTURE_PERIOD = 8       # pixels
SUPERSAMPLE = 4


def caption(labels: dict) -> str:
    """'a red circle on a gray background', 'a red circle and a blue square on a striped gray
    background'. Objects are named left to right (by x in the first frame)."""
    objs = sorted(labels["objects"], key=lambda o: o["path"][0][0])
    names = " and ".join(f"a {o['colour']} {o['shape']}" for o in objs)
    bg = labels["background"]
    tex = "" if bg["texture"] == "plain" else bg["texture"] + " "
    return f"{names} on a {tex}{bg['colour']} background"


# ---------------------------------------------------------------------------------------------
# sampling labels
# ---------------------------------------------------------------------------------------------
def _path(rng: np.random.Generator, frames: int, size: int, radius: float, kind: str) -> np.ndarray:
    """Centre positions [frames, 2] (x, y) that keep a shape of `radius` inside the frame."""
    lo, hi = radius + 2.0, size - radius - 2.0
    for _ in range(200):
        if kind == "linear":
            p0 = rng.uniform(lo, hi, 2)
            v = rng.uniform(-2.2, 2.2, 2)
            path = p0[None, :] + v[None, :] * np.arange(frames)[:, None]
        else:  # curved: an arc of a circle
            c = rng.uniform(lo, hi, 2)
            rad = rng.uniform(5.0, 14.0)
            w = rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)
            a0 = rng.uniform(0, 2 * math.pi)
            a = a0 + w * np.arange(frames)
            path = c[None, :] + rad * np.stack([np.cos(a), np.sin(a)], 1)
        if path.min() >= lo and path.max() <= hi:
            return path
    # fall back to a still object in the middle (never happens with these ranges in practice)
    return np.full((frames, 2), size / 2.0)


def sample_clip(rng: np.random.Generator, frames: int = 8, size: int = 64, two_prob: float = 0.35) -> dict:
    """Random labels for one clip: background (colour, texture, pan), one or two objects
    (shape, colour, radius, path). Two objects never overlap and have different colours."""
    bg = {
        "colour": str(rng.choice(list(BACKGROUND_COLOURS))),
        "texture": str(rng.choice(TEXTURES)),
        "pan": [float(v) for v in (rng.uniform(-1.5, 1.5, 2) if rng.random() < 0.6 else (0.0, 0.0))],
        "phase": [float(v) for v in rng.uniform(0, TEXTURE_PERIOD, 2)],
    }
    n = 2 if rng.random() < two_prob else 1
    for _ in range(500):
        colours = rng.choice(list(OBJECT_COLOURS), size=n, replace=False)
        objs = []
        for i in range(n):
            radius = float(rng.uniform(7.5, 10.5) if n == 1 else rng.uniform(6.5, 8.5))
            kind = "linear" if rng.random() < 0.5 else "curved"
            objs.append({"shape": str(rng.choice(SHAPES)), "colour": str(colours[i]), "radius": radius,
                         "motion": kind, "path": _path(rng, frames, size, radius, kind)})
        if n == 1 or _apart(objs[0], objs[1]):
            break
    for o in objs:
        o["path"] = [[round(float(x), 3), round(float(y), 3)] for x, y in o["path"]]
    labels = {"size": size, "frames": frames, "background": bg, "objects": objs}
    labels["caption"] = caption(labels)
    return labels


def _apart(a: dict, b: dict) -> bool:
    pa, pb = np.asarray(a["path"]), np.asarray(b["path"])
    gap = np.linalg.norm(pa - pb, axis=1).min()
    return gap > 1.45 * (a["radius"] + b["radius"]) + 3.0


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean coverage of a shape centred at (cx, cy) with size parameter r, sampled at x, y."""
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = r * 0.88
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        h = r * 1.2
        return np.abs(dx) + np.abs(dy) <= h
    if shape == "triangle":  # pointing up; (cx, cy) is the bounding box centre
        h = r * 1.05
        top, bottom = cy - h, cy + h
        t = (y - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * h)
    raise ValueError(f"unknown shape {shape}")


def background(labels: dict, frame: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    bg = labels["background"]
    base = np.array(BACKGROUND_COLOURS[bg["colour"]], dtype=np.float32)
    img = np.broadcast_to(base, xs.shape + (3,)).astype(np.float32)
    if bg["texture"] == "plain":
        return img
    ox = bg["phase"][0] + bg["pan"][0] * frame
    oy = bg["phase"][1] + bg["pan"][1] * frame
    if bg["texture"] == "striped":  # vertical stripes
        s = np.floor((xs + ox) / (TEXTURE_PERIOD / 2)) % 2
    else:
        s = (np.floor((xs + ox) / (TEXTURE_PERIOD / 2)) + np.floor((ys + oy) / (TEXTURE_PERIOD / 2))) % 2
    sign = (s * 2 - 1).astype(np.float32)
    # dark backgrounds get lighter texture, light ones darker, so colours stay in range
    return np.clip(img + (sign * TEXTURE_AMPLITUDE)[..., None], 0, 255)


def render_clip(labels: dict) -> np.ndarray:
    """uint8 frames [F, H, W, 3]."""
    size, frames, ss = labels["size"], labels["frames"], SUPERSAMPLE
    coords = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        img = background(labels, f, xs, ys)
        for o in labels["objects"]:
            cx, cy = o["path"][f]
            m = shape_mask(o["shape"], xs, ys, cx, cy, o["radius"])
            img[m] = np.array(OBJECT_COLOURS[o["colour"]], dtype=np.float32)
        img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
        out[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# edits (held-out set, demo): change one attribute, keep everything else
# ---------------------------------------------------------------------------------------------
def edited_labels(labels: dict, rng: np.random.Generator) -> list[tuple[str, int | None, dict]]:
    """One colour, one shape and one background edit of the clip: (kind, the edited object's
    index left to right or None, the target clip's whole labels). Same path, same everything
    but the one attribute, so `render_clip` of the target is the ideal edit."""
    import copy

    out = []
    objs = sorted(labels["objects"], key=lambda o: o["path"][0][0])
    i = int(rng.integers(len(objs)))  # which object a colour/shape edit targets
    used = {o["colour"] for o in objs}

    new = copy.deepcopy(labels)
    tgt = sorted(new["objects"], key=lambda o: o["path"][0][0])[i]
    tgt["colour"] = str(rng.choice([c for c in OBJECT_COLOURS if c not in used]))
    out.append(("colour", i, new))

    new = copy.deepcopy(labels)
    tgt = sorted(new["objects"], key=lambda o: o["path"][0][0])[i]
    tgt["shape"] = str(rng.choice([s for s in SHAPES if s != tgt["shape"]]))
    out.append(("shape", i, new))

    new = copy.deepcopy(labels)
    new["background"]["colour"] = str(rng.choice([c for c in BACKGROUND_COLOURS if c != labels["background"]["colour"]]))
    out.append(("background", None, new))
    for _, _, new in out:
        new["caption"] = caption(new)
    return out


def edits_for(labels: dict, rng: np.random.Generator) -> list[dict]:
    """One colour, one shape and one background edit of the clip, as target labels + prompt."""
    return [{"kind": kind, "prompt": new["caption"], "target": i,
             "expect": {"background": new["background"]["colour"],
                        "texture": new["background"]["texture"],
                        "objects": [{"shape": o["shape"], "colour": o["colour"]}
                                    for o in sorted(new["objects"], key=lambda o: o["path"][0][0])]}}
            for kind, i, new in edited_labels(labels, rng)]


def palette() -> dict:
    return {"object": {k: list(v) for k, v in OBJECT_COLOURS.items()},
            "background": {k: list(v) for k, v in BACKGROUND_COLOURS.items()},
            "shapes": list(SHAPES), "textures": list(TEXTURES)}
