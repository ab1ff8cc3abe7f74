"""The oracle bundles: regenerated files equal the committed ones, and the ONNX check passes."""
import filecmp
import importlib.util
import os


def _load(repo):
    path = os.path.join(repo, "models", "oracle", "make_oracle.py")
    spec = importlib.util.spec_from_file_location("make_oracle", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_oracle_regenerates_identically_and_checks(repo, tmp_path, capsys):
    mod = _load(repo)
    a, b = tmp_path / "oracle", tmp_path / "oracle-shifted"
    assert mod.main(["--out", str(a), "--out-shifted", str(b)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "oracle check: ok" in out
    for name, committed in (("oracle", a), ("oracle-shifted", b)):
        folder = os.path.join(repo, "models", name)
        files = sorted(f for f in os.listdir(committed))
        for f in files:
            if f == "README.md":
                continue  # README names its own regenerate commands; compared below
            assert filecmp.cmp(os.path.join(folder, f), committed / f, shallow=False), (name, f)
        with open(os.path.join(folder, "README.md"), encoding="utf-8") as fh:
            assert fh.read() == (committed / "README.md").read_text(encoding="utf-8")


def test_identity_coefficients(repo):
    """Contextual U on oracle == plain on oracle-shifted (with k at the final alpha)."""
    import numpy as np

    mod = _load(repo)
    for n in (10, 50):
        s = mod.discrete_ddim_coefficients(n, mod.eps_shifted_coeffs)
        u = mod.discrete_ddim_coefficients(n, mod.eps_star_coeffs, k_scale=mod.SCALE, k_final_zero=False)
        assert np.allclose(s, u, atol=1e-12, rtol=0)
