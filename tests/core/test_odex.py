"""ODEx core: features, sufficient statistics, OAS covariance, Mahalanobis distances, the expansion rule."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nnunet_ext.core.odex import (
    Calibration,
    GaussianStats,
    decide,
    distributed_reduce,
    history_distances,
    history_score,
    history_threshold,
    mahalanobis,
    no_reduce,
    norm_input_features,
    normalise,
    oas_shrinkage,
    summed_distance,
)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 8, 8, 8)])
def test_features_are_channel_mean_and_log_std(shape):
    x = torch.randn(shape) * 3 + 1
    z = norm_input_features(x)
    assert z.shape == (2, 6) and z.dtype == torch.float64
    flat = x.double().flatten(2)
    torch.testing.assert_close(z[:, :3], flat.mean(2))
    torch.testing.assert_close(z[:, 3:], torch.log(flat.std(2, unbiased=False) + 1e-5))


def test_features_need_a_spatial_axis():
    with pytest.raises(ValueError, match="at least one spatial axis"):
        norm_input_features(torch.zeros(2, 3))


def test_stats_equal_torch_mean_and_biased_covariance():
    torch.manual_seed(0)
    z = torch.randn(40, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64)
    stats = GaussianStats(5)
    stats.update(z[:15])
    stats.update(z[15:])
    torch.testing.assert_close(stats.mean, z.mean(0))
    torch.testing.assert_close(stats.empirical_covariance, torch.cov(z.T, correction=0))


def test_oas_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    torch.manual_seed(1)
    z = torch.randn(12, 6, dtype=torch.float64) * torch.arange(1, 7)
    stats = GaussianStats(6)
    stats.update(z)
    ours = oas_shrinkage(stats.empirical_covariance, 12)
    ref = covariance.OAS(assume_centered=False).fit(z.numpy()).covariance_
    torch.testing.assert_close(ours, torch.from_numpy(ref))


@pytest.mark.parametrize("n", [1, 3, 10])
def test_covariance_is_positive_definite_with_fewer_samples_than_dimensions(n):
    torch.manual_seed(2)
    stats = GaussianStats(16)
    stats.update(torch.randn(n, 16, dtype=torch.float64))
    mean, chol = stats.gaussian()
    assert torch.all(torch.diagonal(chol) > 0)
    d = mahalanobis(torch.randn(4, 16, dtype=torch.float64), mean, chol)
    assert torch.isfinite(d).all()


def test_no_samples_raise():
    with pytest.raises(ValueError, match="no samples"):
        GaussianStats(3).gaussian()
    with pytest.raises(ValueError, match=r"z must be \(N, 3\)"):
        GaussianStats(3).update(torch.zeros(2, 4))


def test_mahalanobis_is_zero_at_the_mean_and_euclidean_for_identity():
    torch.manual_seed(3)
    z = torch.randn(500, 3, dtype=torch.float64)
    stats = GaussianStats(3)
    stats.update(z)
    mean, chol = stats.gaussian()
    assert float(mahalanobis(mean[None], mean, chol)[0]) < 1e-9
    points = torch.randn(5, 3, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(mahalanobis(points, torch.zeros(3, dtype=torch.float64), eye), points.norm(dim=1))
    # against the explicit inverse
    cov = chol @ chol.T
    diff = points - mean
    ref = torch.einsum("nd,de,ne->n", diff, torch.linalg.inv(cov), diff).sqrt()
    torch.testing.assert_close(mahalanobis(points, mean, chol), ref)


def test_summed_distance_adds_over_the_history():
    eye = torch.eye(2, dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(summed_distance(z, means, torch.stack([eye, eye])), torch.tensor([5.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="history is empty"):
        summed_distance(z, means[:0], torch.stack([eye, eye])[:0])


def test_normalisation_and_threshold_follow_the_paper():
    cal = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)  # min, max, mean
    assert float(normalise(1.0, cal[0])) == 0.0
    assert float(normalise(6.0, cal[0])) == pytest.approx(1.0)  # doubled maximum
    assert float(history_threshold(cal)) == pytest.approx(2 * (2.0 - 1.0) / 5.0)
    assert float(history_threshold(cal[:0])) == math.inf


def test_history_score_averages_normalised_distances_over_the_history():
    eye = torch.eye(2, dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    cals = torch.tensor([[0.0, 1.0, 0.5], [1.0, 3.0, 2.0]], dtype=torch.float64)
    z = torch.zeros(1, 2, dtype=torch.float64)  # distances 0 and 5
    expected = (0.0 + (5.0 - 1.0) / 5.0) / 2
    torch.testing.assert_close(history_score(z, means, torch.stack([eye, eye]), cals),
                               torch.tensor([expected], dtype=torch.float64))
    assert float(history_score(z, means[:0], torch.stack([eye, eye])[:0], cals[:0])[0]) == math.inf
    # the parts: one normalised distance per Gaussian; none for an empty history
    torch.testing.assert_close(history_distances(z, means, torch.stack([eye, eye]), cals),
                               torch.tensor([[0.0, 0.8]], dtype=torch.float64))
    assert history_distances(z, means[:0], torch.stack([eye, eye])[:0], cals[:0]).shape == (1, 0)


def test_a_child_with_its_parents_history_wins_on_its_own_data_and_loses_on_the_parents():
    eye = torch.eye(2, dtype=torch.float64)
    cal = torch.tensor([0.5, 2.0, 1.2], dtype=torch.float64)
    old, new = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([10.0, 0.0], dtype=torch.float64)
    parent = (old[None], eye[None], cal[None])
    child = (torch.stack([old, new]), torch.stack([eye, eye]), torch.stack([cal, cal]))
    thresholds = torch.stack([history_threshold(parent[2]), history_threshold(child[2])])
    for point, owner in ((old, 0), (new, 1)):
        scores = torch.stack([history_score(point[None], *parent)[0], history_score(point[None], *child)[0]])
        assert decide(scores, thresholds).best == owner


def test_decide_keeps_near_data_and_expands_on_far_data():
    thresholds = torch.tensor([0.4, 0.4], dtype=torch.float64)
    near = decide(torch.tensor([0.2, 3.0], dtype=torch.float64), thresholds)
    assert near.best == 0 and not near.expand
    far = decide(torch.tensor([1.6, 3.0], dtype=torch.float64), thresholds)
    assert far.best == 0 and far.expand and far.xi == pytest.approx(0.4)
    assert decide(torch.tensor([1.6, 3.0], dtype=torch.float64), thresholds, xi=2.0).expand is False


def test_decide_minus_infinity_always_expands_and_no_history_never_does():
    thresholds = torch.tensor([0.4], dtype=torch.float64)
    assert decide(torch.tensor([0.0], dtype=torch.float64), thresholds, xi=-math.inf).expand
    empty = decide(torch.tensor([math.inf], dtype=torch.float64), torch.tensor([math.inf], dtype=torch.float64))
    assert empty.best == 0 and not empty.expand
    with pytest.raises(ValueError, match=r"both be \(M,\)"):
        decide(torch.tensor([1.0, 2.0], dtype=torch.float64), thresholds)


def test_calibration_tracks_min_max_mean():
    cal = Calibration()
    cal.update(torch.tensor([2.0, 4.0]))
    cal.update(torch.tensor([9.0]))
    cal.all_reduce(no_reduce)
    torch.testing.assert_close(cal.as_tensor(), torch.tensor([2.0, 9.0, 5.0], dtype=torch.float64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, chunks: list, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        stats = GaussianStats(chunks[rank].shape[1])
        stats.update(chunks[rank])
        stats.all_reduce(distributed_reduce)
        cal = Calibration()
        cal.update(chunks[rank][:, 0])
        cal.all_reduce(distributed_reduce)
        out[rank] = (stats.count.clone(), stats.total.clone(), stats.outer.clone(), cal.as_tensor())
    finally:
        dist.destroy_process_group()


def test_reduction_over_two_gloo_ranks_equals_one_process():
    torch.manual_seed(4)
    z = torch.randn(11, 4, dtype=torch.float64)
    chunks = [z[:5], z[5:]]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_main, args=(2, _free_port(), chunks, out), nprocs=2, join=True)
        results = dict(out)
    single = GaussianStats(4)
    single.update(z)
    cal = Calibration()
    cal.update(z[:, 0])
    for rank in (0, 1):
        count, total, outer, cal_t = results[rank]
        assert float(count) == 11
        torch.testing.assert_close(total, single.total)
        torch.testing.assert_close(outer, single.outer)
        torch.testing.assert_close(cal_t, cal.as_tensor())
