"""MR signal equations, tissue tables, Rician noise and receive bias: references, limits, physics, bad input."""

import math

import pytest
import torch

from nnunet_ext.core.mr_signal import (
    TISSUES,
    mprage_signal,
    partial_volume_signal,
    receive_bias,
    rician_noise,
    spgr_signal,
    spin_echo_signal,
)

FIELDS = (1.5, 3.0)
MPRAGE = {"tr": 2300.0, "ti": 900.0, "te": 3.0, "flip_deg": 9.0, "echo_spacing": 7.0, "readouts": 160}


def _signals(equation, field: float, **protocol) -> dict[str, float]:
    relaxation = "t2_ms" if equation is spin_echo_signal else "t2s_ms"
    return {name: float(equation(t.pd, t.t1_ms, getattr(t, relaxation), **protocol))
            for name, t in TISSUES[field].items()}


def _wm_over_gm(equation, field: float, **protocol) -> float:
    s = _signals(equation, field, **protocol)
    return s["wm"] / s["gm"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("tr", "te", "flip"), [(20.0, 4.0, 25.0), (8.0, 3.0, 8.0), (500.0, 10.0, 90.0)])
def test_spgr_equals_cornucopia_gradient_echo(field, tr, te, flip):
    """Reference: cornucopia's GradientEchoTransform (seconds, T2* channel, no MT, B1 = 1)."""
    from cornucopia import GradientEchoTransform

    tissues = list(TISSUES[field].values())
    maps = torch.tensor([[[t.pd for t in tissues]], [[t.t1_ms / 1000 for t in tissues]],
                         [[t.t2s_ms / 1000 for t in tissues]]], dtype=torch.float64)
    reference = GradientEchoTransform(tr=tr / 1000, te=te / 1000, alpha=flip)(maps)
    ours = spgr_signal(maps[0], maps[1] * 1000, maps[2] * 1000, tr=tr, te=te, flip_deg=flip)
    torch.testing.assert_close(ours, reference.reshape(ours.shape), rtol=1e-10, atol=0)


@pytest.mark.parametrize("t1", [300.0, 832.0, 1331.0, 4329.0])
@pytest.mark.parametrize("ti", [200.0, 700.0, 1500.0])
def test_mprage_with_vanishing_flip_is_inversion_recovery(t1, ti):
    flip = 1e-4
    signal = mprage_signal(1.0, t1, 1e9, tr=3000.0, ti=ti, te=0.0, flip_deg=flip, echo_spacing=5.0, readouts=40)
    expected = abs(1 - 2 * math.exp(-ti / t1) / (1 + math.exp(-3000.0 / t1)))
    assert float(signal) / math.sin(math.radians(flip)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("centre", "efficiency"), [(0.5, 1.0), (1.0, 1.0), (0.5, 0.0)])
def test_mprage_deep_into_a_long_train_is_spgr(centre, efficiency):
    """After ~1000 pulses (cos(a) exp(-tau/T1))^k < 1e-13: the preparation is forgotten."""
    wm = TISSUES[3.0]["wm"]
    tau, n = 8.0, 2000
    k = round(centre * n)
    gre = mprage_signal(wm.pd, wm.t1_ms, wm.t2s_ms, tr=n * tau + 100.0, ti=k * tau + 50.0, te=3.0, flip_deg=12.0,
                        echo_spacing=tau, readouts=n, centre=centre, inversion_efficiency=efficiency)
    spgr = spgr_signal(wm.pd, wm.t1_ms, wm.t2s_ms, tr=tau, te=3.0, flip_deg=12.0)
    torch.testing.assert_close(gre, spgr, rtol=1e-10, atol=0)


def test_spin_echo_limits():
    gm = TISSUES[1.5]["gm"]
    long_tr = spin_echo_signal(gm.pd, gm.t1_ms, gm.t2_ms, tr=1e7, te=20.0)
    assert float(long_tr) == pytest.approx(gm.pd * math.exp(-20.0 / gm.t2_ms), rel=1e-9)
    no_echo = spin_echo_signal(gm.pd, gm.t1_ms, gm.t2_ms, tr=500.0, te=0.0)
    assert float(no_echo) == pytest.approx(gm.pd * (1 - math.exp(-500.0 / gm.t1_ms)), rel=1e-9)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("equation", "protocol"), [
    (mprage_signal, MPRAGE),
    (spgr_signal, {"tr": 20.0, "te": 4.0, "flip_deg": 25.0}),
    (spin_echo_signal, {"tr": 500.0, "te": 15.0}),
])
def test_t1_weighted_protocols_order_wm_gm_csf(field, equation, protocol):
    s = _signals(equation, field, **protocol)
    assert s["wm"] > s["gm"] > s["csf"] > 0, s


@pytest.mark.parametrize("field", FIELDS)
def test_spin_echo_t1_weighting_fades_with_tr_until_pd_wins(field):
    """Longer TR lets both tissues recover: WM/GM falls towards the PD ratio (WM has less water than GM)."""
    ratios = [_wm_over_gm(spin_echo_signal, field, tr=tr, te=15.0) for tr in (400.0, 700.0, 1500.0, 5000.0)]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1 > ratios[-1], ratios


@pytest.mark.parametrize("field", FIELDS)
def test_spgr_t1_weighting_grows_with_flip_angle(field):
    """Below the Ernst angle SPGR is PD-weighted (WM darker than GM), above it T1-weighted."""
    ratios = [_wm_over_gm(spgr_signal, field, tr=20.0, te=4.0, flip_deg=f) for f in (3.0, 10.0, 25.0, 40.0)]
    assert ratios == sorted(ratios) and ratios[0] < 1 < ratios[-1], ratios
    wm, gm = TISSUES[field]["wm"], TISSUES[field]["gm"]
    pd_limit = wm.pd * math.exp(-4.0 / wm.t2s_ms) / (gm.pd * math.exp(-4.0 / gm.t2s_ms))
    assert _wm_over_gm(spgr_signal, field, tr=20.0, te=4.0, flip_deg=0.01) == pytest.approx(pd_limit, rel=1e-3)


@pytest.mark.parametrize("field", FIELDS)
def test_mprage_contrast_falls_as_ti_moves_past_the_grey_matter_null(field):
    ratios = [_wm_over_gm(mprage_signal, field, **(MPRAGE | {"ti": ti})) for ti in (600.0, 900.0, 1100.0)]
    assert ratios == sorted(ratios, reverse=True), ratios


@pytest.mark.parametrize(("equation", "protocol"), [
    (spgr_signal, {"tr": 20.0, "te": 4.0, "flip_deg": 25.0}),
    (spin_echo_signal, {"tr": 500.0, "te": 15.0}),
    (mprage_signal, MPRAGE),
])
def test_t1_contrast_shrinks_from_1p5_to_3_tesla(equation, protocol):
    """GM and WM T1 converge with field (ratio 1.81 at 1.5 T, 1.60 at 3 T): the same protocol loses contrast."""
    assert _wm_over_gm(equation, 1.5, **protocol) > _wm_over_gm(equation, 3.0, **protocol) > 1


def test_tissue_tables_are_physical():
    for field in FIELDS:
        t = TISSUES[field]
        assert t["wm"].t1_ms < t["gm"].t1_ms < t["csf"].t1_ms
        assert t["wm"].pd < t["gm"].pd < t["csf"].pd <= 1
        for tissue in t.values():
            assert tissue.t2s_ms <= tissue.t2_ms < tissue.t1_ms
    for name in ("gm", "wm"):
        assert TISSUES[1.5][name].t1_ms < TISSUES[3.0][name].t1_ms
        assert TISSUES[1.5][name].t2s_ms > TISSUES[3.0][name].t2s_ms


@pytest.mark.parametrize("shape", [(2, 8, 8), (3, 8, 8, 8)])
def test_partial_volume_mixes_signals_linearly(shape):
    g = torch.Generator().manual_seed(0)
    fractions = torch.rand(shape, generator=g)
    fractions = fractions / fractions.sum(0)
    signals = torch.arange(1.0, shape[0] + 1)
    out = partial_volume_signal(fractions, signals)
    assert out.shape == shape[1:]
    torch.testing.assert_close(out, (fractions * signals.reshape(-1, *[1] * (len(shape) - 1))).sum(0))
    pure = torch.zeros(shape)
    pure[1] = 1
    torch.testing.assert_close(partial_volume_signal(pure, signals), torch.full(shape[1:], 2.0))


def test_rician_noise_limits():
    g = torch.Generator().manual_seed(0)
    signal = torch.full((200_000,), 10.0)
    assert torch.equal(rician_noise(signal, 0.0, g), signal)
    background = rician_noise(torch.zeros(200_000), 2.0, g)
    assert float(background.mean()) == pytest.approx(2.0 * math.sqrt(math.pi / 2), rel=0.01)  # Rayleigh
    bright = rician_noise(signal * 10, 1.0, g)
    assert float(bright.mean()) == pytest.approx(100.0, rel=1e-3) and float(bright.std()) == pytest.approx(1.0, rel=0.02)
    again = rician_noise(signal, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(again, rician_noise(signal, 1.0, torch.Generator().manual_seed(5)))


def test_receive_bias_is_one_without_amplitude_and_follows_its_parameters():
    axis = torch.linspace(-1, 1, 9)
    u = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    assert torch.equal(receive_bias(u), torch.ones(9, 9, 9))
    radial = receive_bias(u, radial=0.3)
    assert float(radial[0, 4, 4]) > float(radial[4, 4, 4]) and bool((radial > 0).all())
    tilted = receive_bias(u, gradient=(0.0, 0.0, 0.2))
    assert float(tilted[4, 4, 8]) / float(tilted[4, 4, 0]) == pytest.approx(math.exp(0.4))
    shifted = receive_bias(u, wave=0.1, phase=math.pi)
    torch.testing.assert_close(shifted * receive_bias(u, wave=0.1), torch.ones(9, 9, 9))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: spgr_signal(1.0, 800.0, 50.0, tr=0.0, te=3.0, flip_deg=10.0), r"tr must be a positive"),
    (lambda: spgr_signal(1.0, 800.0, 50.0, tr=20.0, te=-1.0, flip_deg=10.0), r"te must be an echo time"),
    (lambda: spgr_signal(1.0, 800.0, 50.0, tr=20.0, te=3.0, flip_deg=0.0), r"flip_deg .*\(0, 180\]"),
    (lambda: spin_echo_signal(1.0, 800.0, 80.0, tr=10.0, te=20.0), r"te must be shorter than tr"),
    (lambda: mprage_signal(1.0, 800.0, 50.0, **(MPRAGE | {"ti": 100.0})), r"TA = .* TD = .*lengthen tr or ti"),
    (lambda: mprage_signal(1.0, 800.0, 50.0, **(MPRAGE | {"readouts": 0})), r"readouts must be an integer"),
    (lambda: mprage_signal(1.0, 800.0, 50.0, **MPRAGE, centre=2.0), r"centre must be in \[0, 1\]"),
    (lambda: rician_noise(torch.zeros(3), -1.0), r"sigma must be >= 0"),
    (lambda: partial_volume_signal(torch.zeros(3, 4), torch.zeros(2)), r"same tissues"),
])
def test_bad_arguments_raise_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
