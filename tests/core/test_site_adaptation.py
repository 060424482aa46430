"""MMTL's batch schedule and mixing, L2-SP's penalty, OCTL's optimizer continuation."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.core.site_adaptation import (
    ADAM_RESTART_STEP,
    alignment_loss,
    continue_optimizer_state,
    fit_cluster_alignment,
    l2sp_penalty,
    mix_batches,
    mmtl_target_count,
)


def test_mmtl_count_ramps_from_zero_to_one_below_the_batch_size():
    counts = [mmtl_target_count(s, 40, 4) for s in range(40)]
    assert counts[0] == 0 and counts[-1] == 3
    assert counts == sorted(counts)  # never decreases
    assert [counts.count(k) for k in range(4)] == [10, 10, 10, 10]  # linear: equal time at every share


def test_mmtl_count_is_the_papers_epoch_formula_at_epoch_boundaries():
    epochs, iterations, batch = 60, 5, 16
    for epoch in range(epochs):
        assert mmtl_target_count(epoch * iterations, epochs * iterations, batch) == int(epoch / epochs * batch)


@pytest.mark.parametrize("args", [(0, 0, 4), (0, 10, 0), (10, 10, 4), (-1, 10, 4)])
def test_mmtl_count_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="mmtl_target_count"):
        mmtl_target_count(*args)


def _batch(value: float, n: int = 4, dims: int = 2) -> dict:
    shape = (n, 1) + (3,) * dims
    target = [torch.full(shape, value), torch.full((n, 1) + (2,) * dims, value)]
    return {"data": torch.full(shape, value), "target": target, "keys": [f"{value}_{i}" for i in range(n)]}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n_target", [0, 1, 3, 4])
def test_mix_batches_takes_source_first_then_target(n_target, dims):
    mixed = mix_batches(_batch(0.0, dims=dims), _batch(1.0, dims=dims), n_target)
    expected = torch.tensor([0.0] * (4 - n_target) + [1.0] * n_target)
    assert torch.equal(mixed["data"].flatten(1)[:, 0], expected)
    for scale in mixed["target"]:  # every deep-supervision scale follows the same samples
        assert torch.equal(scale.flatten(1)[:, 0], expected)
    assert mixed["keys"] == [f"0.0_{i}" for i in range(4 - n_target)] + [f"1.0_{i}" for i in range(n_target)]


def test_mix_batches_rejects_other_sizes_and_counts():
    with pytest.raises(ValueError, match="same size"):
        mix_batches(_batch(0.0, 4), _batch(1.0, 2), 1)
    with pytest.raises(ValueError, match="n_target"):
        mix_batches(_batch(0.0), _batch(1.0), 5)


def test_l2sp_penalty_is_zero_at_the_anchor_and_its_gradient_pulls_towards_it():
    net = torch.nn.Conv2d(1, 2, 3)
    anchor = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert l2sp_penalty(net.named_parameters(), anchor, 0.1).item() == 0.0
    with torch.no_grad():
        net.weight.add_(0.5)
    penalty = l2sp_penalty(net.named_parameters(), anchor, 0.1)
    assert penalty.item() == pytest.approx(0.5 * 0.1 * 0.25 * net.weight.numel(), rel=1e-5)
    penalty.backward()
    assert torch.allclose(net.weight.grad, torch.full_like(net.weight, 0.1 * 0.5))
    assert torch.count_nonzero(net.bias.grad) == 0


def test_l2sp_penalty_rejects_bad_arguments():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="alpha"):
        l2sp_penalty(net.named_parameters(), {}, -1.0)
    with pytest.raises(ValueError, match="no parameter"):
        l2sp_penalty(net.named_parameters(), {"other.weight": torch.zeros(2, 2)}, 0.1)


def _trained(optimizer_cls, steps: int = 5, **kwargs):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = optimizer_cls(net.parameters(), lr=0.1, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    return net, opt


def test_sgd_continuation_carries_momentum_and_keeps_the_new_hyperparameters():
    net, source = _trained(torch.optim.SGD, momentum=0.9)
    fresh = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.99, nesterov=True)
    assert continue_optimizer_state(fresh, source.state_dict()) == 2
    for p in net.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], source.state[p]["momentum_buffer"])
    group = fresh.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.001, 0.99, True)
    # the first fine-tuning step moves along the carried history: buffer = 0.99 * old + g
    old = {p: fresh.state[p]["momentum_buffer"].clone() for p in net.parameters()}
    fresh.zero_grad()
    net(torch.randn(4, 3)).pow(2).sum().backward()
    grads = {p: p.grad.clone() for p in net.parameters()}
    fresh.step()
    for p in net.parameters():
        assert torch.allclose(fresh.state[p]["momentum_buffer"], 0.99 * old[p] + grads[p], atol=1e-6)


def test_adam_continuation_restarts_the_bias_correction_at_step_100():
    net, source = _trained(torch.optim.Adam, steps=7)
    fresh = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.99, 0.999))
    continue_optimizer_state(fresh, source.state_dict())
    p = net.weight
    m, v = source.state[p]["exp_avg"].clone(), source.state[p]["exp_avg_sq"].clone()
    assert float(fresh.state[p]["step"]) == ADAM_RESTART_STEP
    before = p.detach().clone()
    fresh.zero_grad()
    net(torch.randn(4, 3)).pow(2).sum().backward()
    g = p.grad.clone()
    fresh.step()
    b1, b2, t = 0.99, 0.999, ADAM_RESTART_STEP + 1
    m1, v1 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g  # first moment of g (the paper's g^2 is a typo)
    expected = before - 1e-3 * (m1 / (1 - b1 ** t)) / ((v1 / (1 - b2 ** t)).sqrt() + 1e-8)
    assert torch.allclose(p.detach(), expected, atol=1e-7)
    assert fresh.param_groups[0]["betas"] == (0.99, 0.999)


def test_continuation_refuses_other_optimizers_and_other_networks():
    net, sgd = _trained(torch.optim.SGD, momentum=0.9)
    with pytest.raises(ValueError, match="same optimizer type"):
        continue_optimizer_state(torch.optim.Adam(net.parameters()), sgd.state_dict())
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="same network"):
        continue_optimizer_state(torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9), sgd.state_dict())
    wrong = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="shape"):
        continue_optimizer_state(torch.optim.SGD(wrong.parameters(), lr=0.1, momentum=0.9), sgd.state_dict())


def _blobs(centres: torch.Tensor, per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per`` points around each centre: the intra-site variability (spread 0.5 per axis) is larger than the site
    shift of the tests (0.2 per axis), as the paper assumes; the centres are ~10 apart."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(per)
    return centres[labels] + 0.5 * torch.randn(len(labels), centres.shape[1], generator=g), labels


def test_cluster_alignment_matches_each_target_cluster_to_its_shifted_source_cluster():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(4, 16, generator=g)
    source, source_labels = _blobs(centres, 12, seed=1)
    target, target_labels = _blobs(centres + 0.2, 12, seed=2)  # the same structure, shifted (a scanner)
    a = fit_cluster_alignment(source, target, k=4, seed=0, perplexity=10)
    assert a.target_means.shape == a.source_means.shape == (4, 16)
    for i in range(4):  # each matched pair is the same blob on both sites
        blob = torch.cdist(a.target_means[i:i + 1], centres + 0.2).argmin()
        assert torch.cdist(a.source_means[i:i + 1], centres).argmin() == blob
    assert sorted(a.matching.tolist()) == [0, 1, 2, 3]


def test_alignment_loss_is_zero_on_the_matched_source_means_and_pulls_towards_them():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(3, 8, generator=g)
    source, _ = _blobs(centres, 10, seed=1)
    target, _ = _blobs(centres + 0.2, 10, seed=2)
    a = fit_cluster_alignment(source, target, k=3, seed=0, perplexity=8)
    assert alignment_loss(a.source_means, a) == pytest.approx(0.0, abs=1e-8)  # each is nearest its own cluster
    x = target[:6].clone().requires_grad_(True)
    loss = alignment_loss(x, a)
    assert loss.item() > 0
    loss.backward()
    step = x - 0.1 * x.grad
    assert alignment_loss(step.detach(), a) < loss.detach()


def test_cluster_alignment_refuses_too_few_points():
    with pytest.raises(ValueError, match="k must be"):
        fit_cluster_alignment(torch.randn(5, 4), torch.randn(20, 4), k=12)
    with pytest.raises(ValueError, match="same D"):
        fit_cluster_alignment(torch.randn(20, 4), torch.randn(20, 5), k=2)
