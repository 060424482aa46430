"""The multi-source-transfer network wrapper and its style bank (tiny tensors, 2D and 3D)."""

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ext.core.fourier import amplitude_spectrum, fourier_amplitude_swap
from nnunet_ext.networks.fourier_mst import FourierMSTNetwork, StyleBank, sample_donor_patches


class TinyNet(nn.Module):
    def __init__(self, dims=2, classes=3):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.encoder = conv(1, 4, 3, padding=1)
        self.decoder = conv(4, classes, 1)
        self.decoder.deep_supervision = False

    def forward(self, x):
        return self.decoder(torch.relu(self.encoder(x)))


def _donors(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *shape, generator=g) * 2 + 1


def _model(patch=(48, 48), n_donors=6, **settings):
    torch.manual_seed(0)
    bank = StyleBank(1, patch, **settings)
    if n_donors:
        bank.set_donors(_donors(n_donors, patch))
    return FourierMSTNetwork(TinyNet(len(patch)), bank).eval()


def test_training_mode_and_disabled_transfer_are_the_plain_network():
    model = _model(beta=0.1)
    x = torch.randn(2, 1, 48, 48)
    model.train()
    assert torch.equal(model(x), model.net(x))
    model.eval()
    model.enabled = False
    assert torch.equal(model(x), model.net(x))
    assert model.decoder is model.net.decoder


def test_beta_zero_reduces_to_the_plain_prediction():
    model = _model(beta=0.0, n_mst=3)
    x = torch.randn(2, 1, 48, 48)
    expected = torch.log_softmax(model.net(x), 1)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_output_is_log_of_mean_softmax_over_styled_copies():
    model = _model(beta=0.1, n_mst=3)
    x = torch.randn(2, 1, 48, 48)
    styled, index = model.bank.styled_copies(x)
    assert styled.shape == (6, 1, 48, 48) and index.shape == (2, 3)
    probs = torch.softmax(model.net(styled), 1).view(2, 3, 3, 48, 48).mean(1)
    torch.testing.assert_close(model(x).exp(), probs, atol=1e-5, rtol=1e-5)
    model.max_batch = 2
    torch.testing.assert_close(model(x).exp(), probs, atol=1e-5, rtol=1e-5)


def test_srsim_selects_the_most_similar_donor_and_random_is_seeded():
    model = _model(beta=0.1, n_mst=1)
    x = model.bank.donors[3:4].float() + 0.01 * torch.randn(1, 1, 48, 48)
    assert model.bank.styled_copies(x)[1].tolist() == [[3]]
    model.bank.configure(selection="random", n_mst=3)
    a = model.bank.styled_copies(x)[1]
    assert torch.equal(a, model.bank.styled_copies(x)[1])
    model.bank.configure(seed=1)
    assert not torch.equal(a, model.bank.styled_copies(x)[1])


def test_state_dict_round_trip_resizes_the_bank_and_restores_settings():
    model = _model(beta=0.07, n_mst=2)
    fresh = _model(n_donors=0, beta=0.01, n_mst=7)
    fresh.load_state_dict(model.state_dict())  # strict
    assert len(fresh.bank) == 6 and fresh.bank.settings() == model.bank.settings()
    x = torch.randn(1, 1, 48, 48)
    torch.testing.assert_close(fresh(x), model(x))
    wrong = _model(patch=(48, 40), n_donors=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        wrong.bank.load_state_dict(model.bank.state_dict())


def test_reloading_the_same_state_dict_keeps_the_donor_caches():
    # nnU-Net's predictor loads the same parameters before every case: donor work must not be redone
    state = _model(beta=0.05, n_mst=2, selection="srsim").state_dict()
    fresh = _model(n_donors=0)
    fresh.load_state_dict(state)
    x = torch.randn(1, 1, 48, 48)
    expected = fresh(x)
    features = fresh.bank._donor_slice_features()
    fresh.load_state_dict(state)
    assert fresh.bank._donor_slice_features() is features
    torch.testing.assert_close(fresh(x), expected)
    state["bank.donors"].mul_(-1.0)  # modified in place: the caches must go
    fresh.load_state_dict(state)
    assert fresh.bank._donor_slice_features() is not features
    other = _model(n_donors=4).state_dict()  # other donors
    fresh.load_state_dict(other)
    assert len(fresh.bank) == 4


def test_fewer_donors_than_n_mst_uses_all_donors():
    model = _model(n_donors=2, n_mst=7, beta=0.1)
    styled, index = model.bank.styled_copies(torch.randn(1, 1, 48, 48))
    assert styled.shape[0] == 2 and sorted(index[0].tolist()) == [0, 1]


@pytest.mark.parametrize("mode,shape", [("3d", (2, 3)), ("2d", (2, 8, 3)), ("2.5d", (2, 8, 3))])
def test_3d_modes(mode, shape):
    model = _model(patch=(8, 40, 40), n_donors=4, mode=mode, n_mst=3, beta=0.1)
    x = torch.randn(2, 1, 8, 40, 40)
    out = model(x)
    assert out.shape == (2, 3, 8, 40, 40) and torch.isfinite(out).all()
    index = model.bank.styled_copies(x)[1]
    assert index.shape == shape
    if mode == "2.5d":
        z_of_donor_slice = index % 8
        target_z = torch.arange(8).view(1, 8, 1)
        assert (z_of_donor_slice - target_z).abs().max() <= 2


def test_3d_spectra_mode():
    model = _model(patch=(8, 40, 40), n_donors=3, mode="3d", spatial_dims=3, n_mst=2, beta=0.1)
    assert model(torch.randn(1, 1, 8, 40, 40)).shape == (1, 3, 8, 40, 40)


def test_errors():
    with pytest.raises(RuntimeError, match="nnext fda attach"):
        _model(n_donors=0)(torch.randn(1, 1, 48, 48))
    model = _model()
    with pytest.raises(ValueError, match="patch size"):
        model(torch.randn(1, 1, 40, 48))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 1, 48, 48), float("nan")))
    with pytest.raises(ValueError, match="3D configuration"):
        StyleBank(1, (48, 48), mode="3d")
    with pytest.raises(ValueError, match="spatial_dims=3"):
        StyleBank(1, (8, 40, 40), mode="2d", spatial_dims=3)
    with pytest.raises(ValueError, match="n_mst"):
        StyleBank(1, (48, 48), n_mst=0)
    with pytest.raises(ValueError, match="beta"):
        StyleBank(1, (48, 48), beta=0.9)
    with pytest.raises(ValueError, match="constant"):
        StyleBank(1, (48, 48)).set_donors(torch.zeros(2, 1, 48, 48))
    with pytest.raises(ValueError, match="shape"):
        StyleBank(1, (48, 48)).set_donors(torch.zeros(2, 2, 48, 48))


def test_sample_donor_patches_2d():
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, 5, 30, 50)).astype(np.float32) for _ in range(3)]
    volumes[0][:, 2] = 0  # a constant slice is never a donor
    donors = sample_donor_patches(volumes, (40, 40), max_donors=6)
    assert donors.shape == (6, 1, 40, 40)
    assert torch.equal(donors, sample_donor_patches(volumes, (40, 40), max_donors=6))  # deterministic
    assert (donors[:, :, :5] == 0).all() and (donors[:, :, 35:] == 0).all()  # padded centred (30 -> 40)
    assert all(d.std() > 0 for d in donors)
    capped = sample_donor_patches(volumes, (40, 40), max_donors=100, max_megabytes=40 * 40 * 2 * 3 / 2 ** 20)
    assert capped.shape[0] == 3
    with pytest.raises(ValueError, match="constant"):
        sample_donor_patches([np.zeros((1, 3, 8, 8), np.float32)], (8, 8), 4)
    with pytest.raises(ValueError, match="no source volumes"):
        sample_donor_patches([], (8, 8), 4)


def test_sample_donor_patches_3d():
    rng = np.random.default_rng(1)
    volumes = [rng.normal(size=(1, 20, 16, 16)).astype(np.float32) for _ in range(2)]
    donors = sample_donor_patches(volumes, (8, 16, 16), max_donors=5)
    assert donors.shape == (5, 1, 8, 16, 16)
    torch.testing.assert_close(donors[0], torch.from_numpy(volumes[0][:, :8]))  # first crop of case 0


def test_keys_are_the_plain_networks_then_the_bank_and_the_plain_part_loads_into_a_stock_net():
    model = _model(beta=0.05)
    stock = TinyNet()
    keys = list(model.state_dict())
    assert keys[:len(stock.state_dict())] == list(stock.state_dict())
    assert all(k.startswith("bank.") for k in keys[len(stock.state_dict()):])
    stock.load_state_dict(model.plans_state_dict())  # strict
    x = torch.randn(1, 1, 48, 48)
    torch.testing.assert_close(stock(x), model.net(x))


def test_a_checkpoint_saved_with_the_old_net_prefix_still_loads():
    model = _model(beta=0.07, n_mst=2)
    old = {(k if k.startswith("bank.") else f"net.{k}"): v for k, v in model.state_dict().items()}
    assert "net.encoder.weight" in old  # the layout FourierMSTNetwork wrote before the wrapper base
    fresh = _model(n_donors=0)
    fresh.load_state_dict(old)  # strict
    assert len(fresh.bank) == 6 and fresh.bank.settings() == model.bank.settings()
    x = torch.randn(1, 1, 48, 48)
    torch.testing.assert_close(fresh(x), model(x))
    assert "net.encoder.weight" in old and "encoder.weight" not in old  # the caller's mapping is unchanged


@pytest.mark.parametrize("patch", [(48, 48), (8, 40, 40)])
def test_a_blank_patch_is_not_restyled_and_gets_the_plain_prediction(patch):
    model = _model(patch=patch, n_donors=4, beta=0.1, n_mst=3, mode="2d")
    blank = [torch.zeros(1, *patch), torch.full((1, *patch), 2.5), -1.0 + 1e-9 * torch.randn(1, *patch)]
    content = torch.randn(1, *patch)
    batch = torch.stack([blank[0], content, blank[1], blank[2]])
    with torch.no_grad():
        out = model(batch)
        plain = torch.log_softmax(model.net(batch), 1)
        torch.testing.assert_close(out[[0, 2, 3]], plain[[0, 2, 3]])
        torch.testing.assert_close(out[1:2], model.test_time_forward(content[None]))
    # what the swap alone does to a blank patch: the donor's coarse structure appears (the bug this guards)
    swapped = fourier_amplitude_swap(blank[1], amplitude_spectrum(model.bank.donors[:1].float(), 2), 0.1, 2)
    assert swapped.std() > 0.05


def test_near_constant_channels_are_kept_in_the_styled_copies():
    torch.manual_seed(0)
    bank = StyleBank(2, (32, 32), beta=0.1, n_mst=2)
    bank.set_donors(torch.randn(3, 2, 32, 32) * 2 + 1)
    x = torch.randn(1, 2, 32, 32)
    x[:, 1] = 0.5  # one blank channel
    styled, _ = bank.styled_copies(x)
    assert styled.shape == (2, 2, 32, 32)
    assert torch.equal(styled[:, 1], x[:, 1].expand(2, 32, 32))  # kept as it is
    assert not torch.allclose(styled[:, 0], x[:, 0].expand(2, 32, 32))  # the other channel is restyled
