"""The decoder's refiner (models/train/decoder.py): it starts as the lossless PCA decoder, and the
runs it learns from (the reference sampler's, with `strength`) take ctxd's strength steps."""
import numpy as np
import torch

from models.reference.sampler import Schedule
from models.train import decoder, domain, train


def test_an_untrained_refiner_is_the_pca_decoder():
    frames = np.stack([domain.render_clip(domain.sample_clip(np.random.default_rng(s))) for s in range(4)])
    pixels = train.to_pm1(frames.reshape(-1, 64, 64, 3))
    pca = train.PatchAutoencoder(4)
    pca.fit(pixels, whiten_upto=12)
    refined = decoder.RefinedPatchDecoder(pca.dec.weight.detach().numpy(), pca.dec.bias.detach().numpy())
    with torch.no_grad():
        z = pca.encode(pixels).latent_dist.mean
        assert torch.allclose(refined(z), pca.decode(z).sample)
        assert (refined(z) - pixels).abs().max() < 1e-4  # and the PCA decoder is lossless


def test_runs_take_the_least_noisy_steps_as_ctxd_strength_does():
    sched = dict(train.SCHEDULE)
    sch = Schedule(sched, {"k_schedule": "scaled_sqrt_one_minus_abar", "scale": 0.018125, "convention": "U"})
    assert sch.ddim_timesteps(25, 1.0) == sch.ddim_timesteps(25)
    ts = sch.ddim_timesteps(25, 0.8)
    assert len(ts) == 20 and ts[0] == 799 and ts[-1] == 39
    assert len(sch.ddim_timesteps(25, 0.7)) == 18  # ceil(17.5)
    assert len(sch.ddim_timesteps(10, 0.7)) == 7  # 0.7 * 10 is not 8
