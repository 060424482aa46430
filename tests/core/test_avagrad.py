import copy

import numpy as np
import pytest
import torch

from nnunet_ext.core.avagrad import AvaGrad


def _paper_reference(w0: list[np.ndarray], grads_fn, steps: int, lr: float, betas, eps: float):
    """Independent float64 transcription of the paper's equations (module docstring)."""
    w = [x.astype(np.float64).copy() for x in w0]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    d = sum(x.size for x in w)
    trajectory = []
    for _ in range(steps):
        g = grads_fn(w)
        m = [betas[0] * mi + (1 - betas[0]) * gi for mi, gi in zip(m, g)]
        eta = [1.0 / (np.sqrt(vi) + eps) for vi in v]
        norm = np.sqrt(sum((e ** 2).sum() for e in eta) / d)
        w = [wi - lr * (e / norm) * mi for wi, e, mi in zip(w, eta, m)]
        v = [betas[1] * vi + (1 - betas[1]) * gi ** 2 for vi, gi in zip(v, g)]
        trajectory.append([x.copy() for x in w])
    return trajectory


def _quartic_grads(w):
    # f(a, b) = sum(a^4) + sum((b - 1)^2) * 3: different curvatures per parameter
    return [4 * w[0] ** 3, 6 * (w[1] - 1.0)]


def test_matches_paper_equations_step_for_step():
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in w0]
    opt = AvaGrad(params, lr=0.05, betas=(0.9, 0.99), eps=0.01)
    ref = _paper_reference(w0, _quartic_grads, 25, 0.05, (0.9, 0.99), 0.01)
    for step in range(25):
        opt.zero_grad()
        for p, g in zip(params, _quartic_grads([p.detach().numpy() for p in params])):
            p.grad = torch.tensor(g)
        opt.step()
        for p, r in zip(params, ref[step]):
            np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-10, atol=1e-12)


def test_large_eps_is_momentum_sgd_with_lr_times_one_minus_beta1():
    w = torch.nn.Parameter(torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64))
    opt = AvaGrad([w], lr=0.1, betas=(0.9, 0.999), eps=1e12)
    m = torch.zeros(3, dtype=torch.float64)
    expected = w.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        (w ** 2).sum().backward()
        g = 2 * expected
        m = 0.9 * m + 0.1 * g
        expected = expected - 0.1 * m
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-12)


def test_learning_rate_alone_sets_the_step_size():
    """The normalised eta has RMS 1: doubling eps changes the direction mix, not the overall size."""
    sizes = []
    for eps in (1e-3, 1e-1, 10.0):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(1000))
        opt = AvaGrad([w], lr=0.01, eps=eps, betas=(0.0, 0.5))
        before = w.detach().clone()
        for _ in range(2):
            opt.zero_grad()
            (w ** 4).sum().backward()
            opt.step()
        sizes.append((w.detach() - before).norm().item())
    assert max(sizes) / min(sizes) < 3.0, sizes


def test_rosenbrock_converges_like_the_reference_implementation():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    def run(make):
        xy = torch.nn.Parameter(torch.tensor([-1.5, 2.0]))
        opt = make([xy])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / 3000) ** 0.9)
        for _ in range(3000):
            opt.zero_grad()
            loss = (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2
            loss.backward()
            opt.step()
            sched.step()
        return xy.detach()

    ours = run(lambda p: AvaGrad(p, lr=0.01, eps=0.1))
    ref = run(lambda p: pytorch_optimizer.AvaGrad(p, lr=0.01, eps=0.1))
    target = torch.tensor([1.0, 1.0])
    assert (ours - target).norm() < 0.05, ours
    assert (ref - target).norm() < 0.05, ref


def test_state_dict_round_trip_continues_the_exact_trajectory():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    data = torch.randn(16, 4), torch.randn(16, 1)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(data[0]), data[1]).backward()
            opt.step()

    opt = AvaGrad(model.parameters(), lr=0.5, eps=0.1)
    train(model, opt, 5)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, 5)
    continuous = [p.detach().clone() for p in model.parameters()]

    resumed = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    resumed.load_state_dict(saved_model)
    opt2 = AvaGrad(resumed.parameters(), lr=0.5, eps=0.1)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["step"] == 5
    train(resumed, opt2, 5)
    for a, b in zip(continuous, resumed.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_decoupled_weight_decay_shrinks_without_gradient_signal():
    w = torch.nn.Parameter(torch.ones(3))
    opt = AvaGrad([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.95))


def test_parameters_without_gradients_are_untouched():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = AvaGrad([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))
    assert b not in opt.state


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(eps=0.0), "eps"), (dict(betas=(1.0, 0.9)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"), (dict(weight_decay=-1e-4), "weight_decay"),
])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AvaGrad([torch.nn.Parameter(torch.ones(1))], **kwargs)
