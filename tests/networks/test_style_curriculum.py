"""Rotation-TTA network wrapper: stock state-dict keys, identity when off, rotation averaging, 2D and 3D."""

import pytest
import torch
from torch import nn

from nnunet_ext.networks.style_curriculum import RotationTTANetwork, rotation_tta, with_rotation_tta


class TinyNet(nn.Module):
    def __init__(self, dims=2, classes=3, deep_supervision=False):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.encoder = conv(1, 4, 3, padding=1)
        self.decoder = conv(4, classes, 1)
        self.decoder.deep_supervision = deep_supervision
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x):
        out = self.decoder(torch.relu(self.encoder(x))) * self.scale
        return [out, out[..., ::2, ::2]] if self.decoder.deep_supervision else out


def _model(dims=2, tta=True, ds=False):
    torch.manual_seed(0)
    return RotationTTANetwork(TinyNet(dims, deep_supervision=ds), rotation_tta=tta)


def test_state_dict_keys_are_the_stock_keys_both_ways():
    net = _model()
    stock = TinyNet()
    # the stock keys, then the one method entry: the saved TTA switch
    assert list(net.state_dict()) == [*stock.state_dict(), "rotation_tta_enabled"]
    stock.load_state_dict(net.plans_state_dict())  # strict, both directions
    net.load_state_dict(TinyNet().state_dict())
    assert net.decoder is net.net.decoder
    net.decoder.deep_supervision = True
    assert net.net.decoder.deep_supervision is True


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 8, 12)), (3, (1, 1, 4, 8, 8))])
def test_training_mode_or_switched_off_is_the_wrapped_net(dims, shape):
    net = _model(dims)
    x = torch.randn(*shape)
    torch.testing.assert_close(net.train()(x), net.net(x))
    assert net.net.training
    net.eval()
    assert not net.net.training and not net.net.encoder.training
    net.rotation_tta = False
    torch.testing.assert_close(net(x), net.net(x))


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 8, 12)), (3, (1, 1, 4, 8, 8))])
def test_tta_averages_the_four_in_plane_rotations(dims, shape):
    net = _model(dims).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = sum(torch.rot90(net.net(torch.rot90(x, k, (-2, -1))), -k, (-2, -1)) for k in range(4)) / 4
        out = net(x)
    assert out.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(out, expected)
    # the averaged prediction is rotation-equivariant (square inputs)
    sq = torch.randn(1, 1, 8, 8) if dims == 2 else torch.randn(1, 1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(torch.rot90(sq, 1, (-2, -1))), torch.rot90(net(sq), 1, (-2, -1)),
                                   atol=1e-5, rtol=1e-5)


def test_tta_keeps_deep_supervision_lists_and_device_moves():
    net = _model(ds=True).eval()
    out = net(torch.randn(1, 1, 8, 8))
    assert isinstance(out, list) and [o.shape[-1] for o in out] == [8, 4]
    net.to(torch.float64)
    assert next(net.net.parameters()).dtype == torch.float64 and net.net.scale.dtype == torch.float64


def test_bad_input_raises():
    with pytest.raises(ValueError, match="spatial"):
        rotation_tta(nn.Identity(), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="rotations"):
        rotation_tta(nn.Identity(), torch.zeros(1, 1, 4, 4), rotations=())


def test_the_tta_switch_is_saved_and_a_checkpoint_predicts_as_it_was_trained():
    trained = _model(tta=True)
    assert trained.state_dict()["rotation_tta_enabled"].item() is True
    rebuilt = _model(tta=False)  # e.g. the trainer class default changed since
    rebuilt.load_state_dict(trained.state_dict())  # strict, what nnU-Net's predictor does
    assert rebuilt.rotation_tta
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained.eval()(x))


@pytest.mark.parametrize("default", [True, False])
def test_a_checkpoint_from_before_the_switch_was_saved_keeps_the_class_default(default):
    old = {k: v for k, v in _model().state_dict().items() if k != "rotation_tta_enabled"}  # stock keys only
    net = _model(tta=default)
    net.load_state_dict(old)  # strict
    assert net.rotation_tta is default


def test_with_rotation_tta_switches_a_copy():
    state = _model(tta=False).state_dict()
    switched = with_rotation_tta(state, True)
    assert not state["rotation_tta_enabled"] and switched["rotation_tta_enabled"]
    net = _model(tta=False)
    net.load_state_dict(switched)
    assert net.rotation_tta


@pytest.mark.parametrize("dims", [2, 3])
def test_a_blank_patch_gets_the_plain_output_without_rotations(dims):
    net = _model(dims).eval()
    shape = (1, 8, 8) if dims == 2 else (1, 4, 8, 8)
    batch = torch.stack([torch.zeros(shape), torch.randn(shape), torch.full(shape, -0.7)])
    with torch.no_grad():
        out = net(batch)
        torch.testing.assert_close(out[0::2], net.net(batch[0::2]))  # blank: exactly the plain network
        torch.testing.assert_close(out[1:2], rotation_tta(net.net, batch[1:2]))  # content: the TTA
        # a constant patch rotated is itself, but the plain network is not rotation-equivariant: without the
        # blank rule the output would be the rotation average of the plain output, not the plain output
        assert not torch.allclose(rotation_tta(net.net, batch[2:]), net.net(batch[2:]))
