"""bundle.toml writing (the schema the Rust loader reads; see models/export/README.md)."""
from __future__ import annotations

import hashlib
import json
import math
import os


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("non-finite float in bundle.toml")
        r = repr(v)
        return r if ("." in r or "e" in r or "inf" in r) else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def render_toml(top: dict, tables: list[tuple[str, dict]]) -> str:
    lines = [f"{k} = {_value(v)}" for k, v in top.items()]
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_bundle_toml(out_dir: str, *, name: str, description: str, text: dict, latent: dict,
                      schedule: dict, context: dict, models: list[tuple[str, dict]],
                      preset: str | None = None) -> str:
    """models: [(key, {"file", "dtype", optional "external_data", extra keys...})]; sha256 of
    every file (and of its external data file) is computed here. preset: the pipeline preset
    made for the bundle, which ctxd takes when a job names the bundle but no preset."""
    tables = [("text", text), ("latent", latent), ("schedule", schedule), ("context", context)]
    for key, m in models:
        entry = {"file": m["file"], "sha256": sha256_file(os.path.join(out_dir, m["file"])),
                 "dtype": m.get("dtype", "float32")}
        if m.get("external_data"):
            entry["external_data"] = m["external_data"]
            entry["external_data_sha256"] = sha256_file(os.path.join(out_dir, m["external_data"]))
        for k, v in m.items():
            if k not in ("file", "dtype", "external_data"):
                entry[k] = v
        tables.append((f"models.{key}", entry))
    top = {"format_version": 1, "name": name, "description": description}
    if preset:
        top["preset"] = preset
    text_out = render_toml(top, tables)
    path = os.path.join(out_dir, "bundle.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text_out)
    import tomllib  # round-trip check

    with open(path, "rb") as f:
        tomllib.load(f)
    return path
