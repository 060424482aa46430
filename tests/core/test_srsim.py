"""Our SR-SIM (cached per-image features) against piq.srsim, plus its limit cases."""

import piq
import pytest
import torch

from nnunet_ext.core.srsim import MIN_SIDE, srsim, srsim_features, srsim_matrix


def _images(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, *shape, generator=g)
    # smooth structure + noise, in [0, 1]
    blurred = torch.nn.functional.avg_pool2d(base, 5, stride=1, padding=2)
    return blurred, (0.7 * blurred + 0.3 * torch.rand(n, 1, *shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("shape", [(64, 64), (96, 112), (300, 260)])
def test_matches_piq_for_a_batch_of_one(shape):
    x, y = _images(3, shape)
    ours = srsim(x, y, intensity="absolute")
    reference = torch.stack([piq.srsim(x[i:i + 1], y[i:i + 1], reduction="none")[0] for i in range(3)])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_matrix_equals_pairwise_scores():
    x, y = _images(3, (48, 56), seed=1)
    m = srsim_matrix(srsim_features(x), srsim_features(y), chunk=2)
    for i in range(3):
        for j in range(3):
            torch.testing.assert_close(m[i, j], srsim(x[i:i + 1], y[j:j + 1])[0], atol=1e-6, rtol=0)


def test_identical_images_score_one_and_similar_images_rank_first():
    x, y = _images(4, (64, 64), seed=2)
    m = srsim_matrix(srsim_features(x), srsim_features(torch.cat([y, x])))
    torch.testing.assert_close(m[:, 4:].diagonal(), torch.ones(4), atol=1e-5, rtol=0)
    assert (m[:, :4].argmax(1) == torch.arange(4)).all()  # a noisy copy beats other images


def test_robust_intensity_is_invariant_to_gain_and_offset():
    x, y = _images(2, (48, 48), seed=3)
    torch.testing.assert_close(srsim(x, y), srsim(x * 7.0 - 3.0, y * 0.2 + 10.0), atol=1e-4, rtol=0)


def test_small_and_constant_images():
    x, y = _images(2, (20, 24), seed=4)
    features = srsim_features(x)
    assert min(features.saliency.shape[-2:]) == MIN_SIDE
    assert torch.isfinite(srsim(x, y)).all()
    c = torch.zeros(1, 1, 48, 48)
    other = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(srsim(c, c)).all() and torch.isfinite(srsim(c, other)).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        srsim_features(torch.zeros(2, 3, 48, 48))
    with pytest.raises(ValueError, match="empty"):
        srsim_features(torch.zeros(0, 1, 48, 48))
    with pytest.raises(ValueError, match="NaN"):
        srsim_features(torch.full((1, 1, 48, 48), float("nan")))
    with pytest.raises(ValueError, match="intensity"):
        srsim_features(torch.zeros(1, 1, 48, 48), intensity="minmax")
    with pytest.raises(ValueError, match="same size"):
        srsim_matrix(srsim_features(torch.rand(1, 1, 48, 48)), srsim_features(torch.rand(1, 1, 48, 64)))
