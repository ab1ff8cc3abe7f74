"""The decoder's refiner (models/train/decoder.py): it starts as the lossless PCA decoder, and the
runs it learns from (the reference sampler's, with `strength`) take ctxd's strength steps."""
import numpy as np
import pytest
import torch

from models.reference.sampler import Schedule
from models.train import decoder, domain, train


def _pca_and_pixels(clips: int = 4):
    frames = np.stack([domain.render_clip(domain.sample_clip(np.random.default_rng(s))) for s in range(clips)])
    pixels = train.to_pm1(frames.reshape(-1, 64, 64, 3))
    pca = train.PatchAutoencoder(4)
    pca.fit(pixels, whiten_upto=12)
    return pca, pixels


@pytest.mark.parametrize("temporal", [False, True])
def test_an_untrained_refiner_is_the_pca_decoder(temporal):
    pca, pixels = _pca_and_pixels()
    refined = decoder.RefinedPatchDecoder(pca.dec.weight.detach().numpy(), pca.dec.bias.detach().numpy(),
                                          temporal=temporal)
    with torch.no_grad():
        z = pca.encode(pixels).latent_dist.mean
        assert torch.allclose(refined(z), pca.decode(z).sample)
        assert (refined(z) - pixels).abs().max() < 1e-4  # and the PCA decoder is lossless


def test_a_temporal_refiner_mixes_a_windows_frames_in_order():
    """What ctxd runs (forward: the batch axis is one window's frames) is what training runs
    (decode_clips), each frame hears its neighbours and not frames further off in one layer's
    reach, and a one-frame window still decodes."""
    pca, pixels = _pca_and_pixels(1)
    torch.manual_seed(0)
    refined = decoder.RefinedPatchDecoder(pca.dec.weight.detach().numpy(), pca.dec.bias.detach().numpy(),
                                          temporal=True, layers=2)
    with torch.no_grad():
        for q in refined.trainable():  # as if trained: no zero layers left
            q.normal_(0, 0.05)
        z = pca.encode(pixels).latent_dist.mean  # [8, C, h, w], one clip in order
        window = refined(z)
        assert torch.allclose(window, refined.decode_clips(z.transpose(0, 1)[None])[0], atol=1e-6)
        moved = z.clone()
        moved[7] += 1.0  # the last frame changes: its neighbour hears it, frame 0 does not
        out = refined(moved)
        assert (out[6] - window[6]).abs().max() > 1e-3
        assert torch.allclose(out[0], window[0], atol=1e-6)
        assert refined(z[:1]).shape == (1, 3, 64, 64)


def test_runs_take_the_least_noisy_steps_as_ctxd_strength_does():
    sched = dict(train.SCHEDULE)
    sch = Schedule(sched, {"k_schedule": "scaled_sqrt_one_minus_abar", "scale": 0.018125, "convention": "U"})
    assert sch.ddim_timesteps(25, 1.0) == sch.ddim_timesteps(25)
    ts = sch.ddim_timesteps(25, 0.8)
    assert len(ts) == 20 and ts[0] == 799 and ts[-1] == 39
    assert len(sch.ddim_timesteps(25, 0.7)) == 18  # ceil(17.5)
    assert len(sch.ddim_timesteps(10, 0.7)) == 7  # 0.7 * 10 is not 8
