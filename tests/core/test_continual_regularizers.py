"""EWC (Fisher, consolidation, penalty) and LwF distillation on tiny tensors."""

from __future__ import annotations

import doctest
import os

import pytest
import torch
import torch.multiprocessing as mp

import nnunet_ext.core.continual_regularizers as cr
from nnunet_ext.core.continual_regularizers import (
    ElasticWeightConsolidation,
    FisherAccumulator,
    deep_supervision_distillation_loss,
    distillation_loss,
    ewc_penalty,
)


def _linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1, dtype=torch.float64)


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 1, generator=g, dtype=torch.float64))
            for _ in range(n)]


def _loss(layer, x, y):
    return ((layer(x) - y) ** 2).mean()


def test_docstring_example():
    assert doctest.testmod(cr, raise_on_error=True).attempted > 0


def test_fisher_of_a_linear_model_matches_the_hand_computation():
    layer = _linear()
    batches = _batches(3)
    acc = FisherAccumulator(layer.named_parameters())
    for x, y in batches:
        layer.zero_grad()
        _loss(layer, x, y).backward()
        assert acc.accumulate(layer.named_parameters())
    w, b = layer.weight.detach(), layer.bias.detach()
    expected_w, expected_b = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for x, y in batches:  # loss = mean_j (w.x_j + b - y_j)^2: dL/dw = 2/n sum_j r_j x_j, dL/db = 2/n sum_j r_j
        r = (x @ w.T + b - y).squeeze(1)
        expected_w += (2 / len(x) * (r[:, None] * x).sum(0)) ** 2
        expected_b += (2 / len(x) * r.sum()) ** 2
    fisher = acc.fisher()
    torch.testing.assert_close(fisher["weight"], (expected_w / 3).float())
    torch.testing.assert_close(fisher["bias"], (expected_b / 3).float())
    assert acc.count == 3 and acc.skipped == 0


def test_fisher_averages_over_all_batches_not_the_last():
    layer = _linear()
    per_batch = []
    acc = FisherAccumulator(layer.named_parameters())
    for x, y in _batches(5):
        layer.zero_grad()
        _loss(layer, x, y).backward()
        acc.accumulate(layer.named_parameters())
        per_batch.append(layer.weight.grad.detach().float() ** 2)
    torch.testing.assert_close(acc.fisher()["weight"], torch.stack(per_batch).mean(0))
    assert not torch.allclose(acc.fisher()["weight"], per_batch[-1])


def test_fisher_is_invariant_to_the_loss_scale_and_skips_overflow():
    layer = _linear()
    plain, scaled = FisherAccumulator(layer.named_parameters()), FisherAccumulator(layer.named_parameters())
    scale = 2.0 ** 16
    for x, y in _batches(4):
        layer.zero_grad()
        _loss(layer, x, y).backward()
        plain.accumulate(layer.named_parameters())
        layer.zero_grad()
        (scale * _loss(layer, x, y)).backward()  # what GradScaler.scale(loss).backward() produces
        scaled.accumulate(layer.named_parameters(), loss_scale=torch.tensor(scale))
    for n in plain.sums:
        torch.testing.assert_close(scaled.fisher()[n], plain.fisher()[n])
    layer.weight.grad[0, 0] = float("inf")  # an overflow step: skipped, the average is unchanged
    assert scaled.accumulate(layer.named_parameters(), loss_scale=scale) is False
    assert scaled.skipped == 1 and scaled.count == 4
    torch.testing.assert_close(scaled.fisher()["weight"], plain.fisher()["weight"])


def test_fisher_bad_arguments():
    layer = _linear()
    acc = FisherAccumulator(layer.named_parameters())
    with pytest.raises(ValueError, match="loss_scale"):
        acc.accumulate(layer.named_parameters(), loss_scale=0.0)
    with pytest.raises(ValueError, match="not among"):
        acc.accumulate({"other": torch.nn.Parameter(torch.zeros(1))})
    with pytest.raises(RuntimeError, match="no batch"):
        acc.fisher()
    with pytest.raises(ValueError, match="requires_grad"):
        FisherAccumulator({"w": torch.zeros(2)})


def test_penalty_is_zero_at_the_anchor_and_has_the_right_gradient():
    layer = _linear()
    fisher = {"weight": torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float32), "bias": torch.tensor([0.5])}
    ewc = ElasticWeightConsolidation()
    ewc.consolidate(fisher, dict(layer.named_parameters()))
    assert ewc.penalty(layer.named_parameters(), lam=3.0).item() == 0.0
    anchor = {n: p.detach().float().clone() for n, p in layer.named_parameters()}
    with torch.no_grad():
        layer.weight.add_(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64))
        layer.bias.add_(1.0)
    pen = ewc.penalty(layer.named_parameters(), lam=3.0)
    expected = 1.5 * (1 * 0.1 ** 2 + 2 * 0.2 ** 2 + 3 * 0.3 ** 2 + 0.5 * 1.0)
    assert pen.item() == pytest.approx(expected, rel=1e-5)
    pen.backward()  # d/dtheta = lam * F * (theta - anchor)
    torch.testing.assert_close(layer.weight.grad.float(), 3.0 * fisher["weight"] * (layer.weight.detach().float()
                                                                                    - anchor["weight"]))
    torch.testing.assert_close(layer.bias.grad.float(), torch.tensor([1.5]))
    # one gradient step on the penalty alone moves the weights toward the anchor
    before = (layer.weight.detach().float() - anchor["weight"]).abs()
    with torch.no_grad():
        layer.weight.sub_(0.1 * layer.weight.grad)
    assert ((layer.weight.detach().float() - anchor["weight"]).abs() < before).all()
    with pytest.raises(ValueError, match="lam"):
        ewc_penalty(layer.named_parameters(), fisher, anchor, lam=-1.0)
    with pytest.raises(ValueError, match="different network"):
        ewc_penalty({"bias": layer.bias}, fisher, anchor, lam=1.0)


def test_sum_consolidation_has_the_gradient_of_the_summed_stage_penalties():
    torch.manual_seed(0)
    shapes = {"a": (2, 3), "b": (4,)}
    stages = [({n: torch.rand(s) for n, s in shapes.items()}, {n: torch.randn(s) for n, s in shapes.items()})
              for _ in range(3)]
    stages[1][0]["b"][0] = 0.0
    stages[2][0]["b"][0] = 0.0  # F == 0 in two stages: still exact
    ewc = ElasticWeightConsolidation("sum")
    for f, a in stages:
        ewc.consolidate(f, a)
    assert ewc.num_stages == 3
    theta = {n: torch.randn(s, requires_grad=True) for n, s in shapes.items()}
    ewc.penalty(theta, lam=2.0).backward()
    ours = {n: t.grad.clone() for n, t in theta.items()}
    for t in theta.values():
        t.grad = None
    sum(ewc_penalty(theta, f, a, lam=2.0) for f, a in stages).backward()
    for n in shapes:
        torch.testing.assert_close(ours[n], theta[n].grad)


def test_online_consolidation_decays_the_old_importance():
    f1, f2 = {"w": torch.tensor([4.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])}
    a1, a2 = {"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([1.0, 2.0])}
    ewc = ElasticWeightConsolidation("online", gamma=0.5)
    ewc.consolidate(f1, a1)
    ewc.consolidate(f2, a2)
    torch.testing.assert_close(ewc.fisher["w"], torch.tensor([3.0, 1.5]))
    torch.testing.assert_close(ewc.anchor["w"], a2["w"])
    with pytest.raises(ValueError, match="mode"):
        ElasticWeightConsolidation("avg")
    with pytest.raises(ValueError, match="gamma"):
        ElasticWeightConsolidation("online", gamma=1.5)
    with pytest.raises(ValueError, match="disagree"):
        ewc.consolidate({"w": torch.ones(3)}, {"w": torch.ones(2)})


def test_state_dict_round_trip():
    ewc = ElasticWeightConsolidation("online", gamma=0.9)
    ewc.consolidate({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])})
    other = ElasticWeightConsolidation()
    other.load_state_dict(ewc.state_dict())
    assert (other.mode, other.gamma, other.num_stages) == ("online", 0.9, 1)
    torch.testing.assert_close(other.fisher["w"], ewc.fisher["w"])
    torch.testing.assert_close(other.anchor["w"], ewc.anchor["w"])


def _all_reduce_worker(rank: int, world: int, port: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = _linear()
        acc = FisherAccumulator(layer.named_parameters())
        for x, y in _batches(4)[rank::world]:  # each rank its own share of the batches
            layer.zero_grad()
            _loss(layer, x, y).backward()
            acc.accumulate(layer.named_parameters())
        acc.all_reduce()
        results[rank] = (acc.count, acc.fisher()["weight"].clone())
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_over_ranks_equals_one_process_over_all_batches():
    layer = _linear()
    acc = FisherAccumulator(layer.named_parameters())
    for x, y in _batches(4):
        layer.zero_grad()
        _loss(layer, x, y).backward()
        acc.accumulate(layer.named_parameters())
    results = mp.Manager().dict()
    mp.spawn(_all_reduce_worker, args=(2, "29531", results), nprocs=2, join=True)
    for rank in range(2):
        count, fisher = results[rank]
        assert count == 4
        torch.testing.assert_close(fisher, acc.fisher()["weight"])


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)], ids=["2d", "3d"])
def test_distillation_is_zero_for_equal_logits_and_positive_otherwise(spatial):
    torch.manual_seed(0)
    z = torch.randn(2, 3, *spatial)
    assert float(distillation_loss(z, z.clone(), temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    z2 = z + torch.randn_like(z)
    loss = distillation_loss(z2, z, temperature=2.0)
    assert loss.shape == () and float(loss) > 0
    # reference: KL per voxel with torch's kl_div, averaged over voxels
    ref = torch.nn.functional.kl_div(torch.log_softmax(z2 / 2, 1), torch.log_softmax(z / 2, 1), log_target=True,
                                     reduction="none").sum(1).mean() * 4
    torch.testing.assert_close(loss, ref)


def test_temperature_squared_keeps_the_gradient_magnitude_comparable():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 8, 8)
    delta = 0.1 * torch.randn_like(teacher)
    norms, unscaled = {}, {}
    for t in (2.0, 4.0, 8.0):
        student = (teacher + delta).requires_grad_(True)
        distillation_loss(student, teacher, temperature=t).backward()
        norms[t] = student.grad.norm().item()
        unscaled[t] = norms[t] / t ** 2
    assert max(norms.values()) / min(norms.values()) < 1.3  # comparable across T with the T^2 factor
    assert unscaled[2.0] / unscaled[8.0] > 10  # without it the gradient would shrink ~ 1/T^2


def test_deep_supervision_distillation_uses_the_weights():
    torch.manual_seed(0)
    student = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    teacher = [torch.randn_like(s) for s in student]
    weights = (4 / 7, 2 / 7, 0.0)
    loss = deep_supervision_distillation_loss(student, teacher, 2.0, weights)
    expected = sum(w * distillation_loss(s, t, 2.0) for w, s, t in zip(weights, student, teacher))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(deep_supervision_distillation_loss(student[0], teacher[0], 2.0),
                               distillation_loss(student[0], teacher[0], 2.0))
    equal = deep_supervision_distillation_loss(student, teacher, 2.0)
    torch.testing.assert_close(equal, sum(distillation_loss(s, t, 2.0) for s, t in zip(student, teacher)) / 3)


def test_distillation_bad_arguments():
    z = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(z, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="one of each"):
        deep_supervision_distillation_loss([z], z)
    with pytest.raises(ValueError, match="equal length"):
        deep_supervision_distillation_loss([z, z], [z])
    with pytest.raises(ValueError, match="one weight per output"):
        deep_supervision_distillation_loss([z], [z], weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="every weight is 0"):
        deep_supervision_distillation_loss([z], [z], weights=(0.0,))
