"""Edit pairs (train.make_pairs, --paired-share): the target clip is the source clip with one
attribute changed and nothing else, and the training target makes the UNet's x0 estimate
the target clip."""
import numpy as np
import torch

from models.train import domain, train


def test_a_pair_changes_one_attribute_and_keeps_every_pixel_it_does_not_touch():
    cfg = train.CONFIGS["smoke"]
    kinds, captions, src, tgt, src_captions = train.make_pairs(0, 24, cfg, workers=2)
    assert set(kinds) == {"colour", "shape", "background"}
    assert all(a != b for a, b in zip(captions, src_captions))  # one word differs
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
    _, captions, src, _, _ = train.make_pairs(0, 8, cfg, workers=2)
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


def test_mixed_pair_rows_lie_between_source_and_target_and_still_aim_at_the_target():
    g = torch.Generator().manual_seed(1)
    src, tgt, eps = (torch.randn(5, 4, 2, 3, 3, generator=g) for _ in range(3))
    x0 = src.clone()
    lam = torch.tensor([0.0, 1.0, 0.25])
    train.mix_pair_rows(x0, tgt, 1, 4, lam)
    assert torch.equal(x0[0], src[0]) and torch.equal(x0[4], src[4])  # rows outside untouched
    assert torch.allclose(x0[1], src[1]) and torch.allclose(x0[2], tgt[2])
    assert torch.allclose(x0[3], 0.75 * src[3] + 0.25 * tgt[3])
    # noised from the mix, the v target's x0 estimate is still the target clip
    abar = torch.tensor([0.3, 0.5, 0.9, 0.05, 0.7]).view(5, 1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = train.v_target(x0, tgt, eps, abar)
    assert torch.allclose(abar.sqrt() * xt - (1 - abar).sqrt() * v, tgt, atol=1e-5)


def _tiny_and_latents(n: int):
    """(models/tiny's path, its reference Bundle, its schedule, n seeded latents of 2 frames 8 x 8)."""
    import os

    from models.reference import sampler as ref

    tiny = os.path.join(os.path.dirname(ref.__file__), "..", "tiny")
    b = ref.Bundle(tiny)
    g = torch.Generator().manual_seed(0)
    return tiny, b, b.schedule(), torch.randn(n, int(b.toml["latent"]["channels"]), 2, 8, 8, generator=g)


def _noised(sch, x0: np.ndarray, eps: torch.Tensor, t: int, r: np.ndarray) -> np.ndarray:
    """sqrt(abar_t) x0 + sqrt(1 - abar_t) eps + k_t r: the latent training makes of eps at t."""
    import math

    a = sch.abar_of(t)
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * eps.double().numpy() + sch.k_at(t) * r


def test_inversion_noise_rebuilds_each_rows_inverted_latent():
    """inverted.inversion_noise (--paired-inverted): per row, sqrt(abar) x0 + sqrt(1 - abar) eps
    plus the context shift is the latent the reference DDIM inversion reaches under that row's
    own caption, at every timestep >= t_from it visits (rows with different captions in one
    batch, a batch split across calls)."""
    from models.reference import sampler as ref
    from models.train.inverted import inversion_noise

    tiny, b, sch, x0 = _tiny_and_latents(3)
    caps = ["a red circle on a gray background", "a blue square on a white background",
            "a red circle on a gray background"]
    ts, eps = inversion_noise(tiny, x0, caps, steps=5, t_from=300, batch=2, threads=1, log=lambda m: None)
    asc = list(reversed(sch.ddim_timesteps(5)))
    assert ts.tolist() == [t for t in asc if t >= 300] and eps.shape == (3, len(ts)) + tuple(x0.shape[1:])
    for row, cap in enumerate(caps):
        x = x0[row:row + 1].numpy()
        traj = ref.ddim_invert(b, x, x, cap, steps=5)
        r = b.adapter(x, b.text_states(cap), 0)
        for s, t in enumerate(ts.tolist()):
            rebuilt = _noised(sch, x, eps[row:row + 1, s], t, r)
            assert np.abs(rebuilt - traj[asc.index(t) + 1]).max() < 5e-3, (cap, t)
    # the two rows with one caption and different latents hold different noise
    assert not torch.equal(eps[0], eps[2])


def test_edit_noise_rebuilds_the_latents_each_rows_edit_visits():
    """edited.edit_noise (--paired-inverted-as edit): per row, sqrt(abar) x0 + sqrt(1 - abar) eps
    plus the context shift is the latent the reference edit-friendly edit towards the row's
    target caption holds at each of its steps, at its kind's strength (rows of different kinds,
    a kind split across batches); steps past a row's own count are left zero."""
    from models.reference import sampler as ref
    from models.train import edited

    tiny, b, sch, x0 = _tiny_and_latents(4)
    src = ["a red circle on a gray background", "a blue square on a white background",
           "a red circle on a gray background", "a green diamond on a black background"]
    tgt = ["a red square on a gray background", "a yellow square on a white background",
           "a red circle on a beige background", "a green circle on a black background"]
    kinds = ["shape", "colour", "background", "shape"]
    ts, n, eps = edited.edit_noise(tiny, x0, src, tgt, kinds, seed=5, batch=1, threads=1, log=lambda m: None)
    counts = [len(sch.ddim_timesteps(edited.STEPS, edited.STRENGTH[k])) for k in kinds]
    assert n.tolist() == counts and eps.shape == (4, max(counts)) + tuple(x0.shape[1:])
    for row in range(4):
        x = x0[row:row + 1].numpy()
        steps = sch.ddim_timesteps(edited.STEPS, edited.STRENGTH[kinds[row]])
        noise = np.random.default_rng([5, row]).standard_normal((len(steps), 1) + x.shape[1:]).astype(np.float32)
        inv = ref.friendly_invert(b, x, x, src[row], steps=edited.STEPS, noise=noise,
                                  strength=edited.STRENGTH[kinds[row]])
        k = len(steps)
        traj = ref.friendly_edit(b, inv[k], x, tgt[row], steps=edited.STEPS, residuals=inv[k + 1:],
                                 guidance=edited.GUIDANCE, strength=edited.STRENGTH[kinds[row]])
        r = b.adapter(x, b.text_states(tgt[row]), 0)
        assert ts[row, :k].tolist() == steps
        for s, t in enumerate(steps):
            rebuilt = _noised(sch, x, eps[row:row + 1, s], t, r)
            assert np.abs(rebuilt - traj[s]).max() < 5e-3, (row, t)
        assert not eps[row, k:].any() and not ts[row, k:].any()
    # the edit moves off the forward process: the last step's noise is not the first's
    assert not torch.allclose(eps[0, 0], eps[0, counts[0] - 1], atol=0.1)


def test_vflip_turns_upside_down_only_clips_without_a_triangle_and_a_pair_together():
    cfg = train.CONFIGS["smoke"]
    kinds, captions, src, tgt, src_captions = train.make_pairs(0, 40, cfg, workers=2)
    before_src, before_tgt = src.copy(), tgt.copy()
    caps = list(zip(src_captions, captions))
    n = train.flip_upside_down([src, tgt], caps, 0.5, seed=7)
    upright = [i for i, c in enumerate(caps) if not any("triangle" in x for x in c)]
    assert 0 < n < len(upright)  # about half of them, seeded
    flipped = 0
    for i, c in enumerate(caps):
        same = np.array_equal(src[i], before_src[i]) and np.array_equal(tgt[i], before_tgt[i])
        turned = (np.array_equal(src[i], before_src[i][:, ::-1])
                  and np.array_equal(tgt[i], before_tgt[i][:, ::-1]))
        assert same or turned, c
        if turned and not same:
            assert i in upright, c  # a triangle would point down: never flipped
            flipped += 1
    assert flipped == n


def test_paired_kinds_weights_which_edits_pairs_show():
    import dataclasses

    cfg = train.CONFIGS["smoke"]
    only_shape = dataclasses.replace(cfg, paired_kinds=(0.0, 1.0, 0.0))
    kinds = train.make_pairs(0, 24, only_shape, workers=2)[0]
    assert set(kinds) == {"shape"}
    # even weights of any size draw as the runs before the option did
    even = train.make_pairs(0, 24, cfg, workers=2)
    doubled = train.make_pairs(0, 24, dataclasses.replace(cfg, paired_kinds=(2.0, 2.0, 2.0)), workers=2)
    assert even[0] == doubled[0] and np.array_equal(even[2], doubled[2])
    assert len(set(even[0])) == 3
