"""Edit pairs (train.make_pairs, --paired-share): the target clip is the source clip with one
attribute changed and nothing else, and the training target makes the UNet's x0 estimate
the target clip."""
import numpy as np
import torch

from models.train import domain, train


def test_a_pair_changes_one_attribute_and_keeps_every_pixel_it_does_not_touch():
    cfg = train.CONFIGS["smoke"]
    kinds, captions, src, tgt = train.make_pairs(0, 24, cfg, workers=2)
    assert set(kinds) == {"colour", "shape", "background"}
    assert src.shape == tgt.shape == (24, cfg.frames, cfg.size, cfg.size, 3)
    for k, cap, s, t in zip(kinds, captions, src, tgt):
        changed = np.abs(s.astype(int) - t.astype(int)).max(axis=-1) > 0  # [F, H, W]
        assert changed.any(), cap
        share = changed.mean()
        if k == "background":
            assert share > 0.5, (cap, share)  # the whole background, not the objects
        else:
            assert share < 0.15, (cap, share)  # one object's pixels (at most 10.5 px radius)
        # the changed pixels stay in the same places frame to frame as the object moves: the
        # path is the source's
        assert all(changed[f].any() for f in range(cfg.frames)), cap


def test_pairs_are_not_the_heldout_or_validation_clips():
    cfg = train.CONFIGS["smoke"]
    _, captions, src, _ = train.make_pairs(0, 8, cfg, workers=2)
    for salt in (train.HELDOUT_SALT, train.VALIDATION_SALT):
        rng = np.random.default_rng(0 + salt)
        first = domain.render_clip(domain.sample_clip(rng, frames=cfg.frames, size=cfg.size, two_prob=0.0))
        assert not any(np.array_equal(first, s) for s in src)


def test_the_paired_v_target_estimates_the_target_clip():
    g = torch.Generator().manual_seed(0)
    x0, x_target, eps = (torch.randn(3, 4, 2, 5, 5, generator=g) for _ in range(3))
    a = torch.tensor([0.9, 0.3, 0.01]).view(3, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = train.v_target(x0, x_target, eps, a)
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x_target, atol=1e-5)
    # without a pair: the usual v-prediction target
    plain = train.v_target(x0, x0, eps, a)
    assert torch.allclose(plain, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * plain, x0, atol=1e-5)
