"""Regeneration decoder and encoder feature capture (nnunet_ext.networks.style_consistency), 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ext.networks.feature_capture import FeatureCapture
from nnunet_ext.networks.style_consistency import RegenerationDecoder


def _unet(dim: int, cls=PlainConvUNet, in_channels: int = 1):
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    strides = [1, 2, 2, [1, 2, 2] if dim == 3 else 2]
    n_conv = [2, 3, 1, 2] if cls is PlainConvUNet else [1, 2, 1, 1]
    return cls(in_channels, 4, [4, 8, 16, 32], conv, 3, strides, n_conv, 3, [1, 1, 1], True, norm,
               {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True})


@pytest.mark.parametrize("dim, shape", [(2, (2, 1, 16, 24)), (3, (1, 2, 8, 16, 16))])
@pytest.mark.parametrize("cls", [PlainConvUNet, ResidualEncoderUNet])
def test_decoder_regenerates_the_input_size_from_the_bottleneck(dim, shape, cls):
    net = _unet(dim, cls, in_channels=shape[1])
    decoder = RegenerationDecoder(net.encoder, shape[1])
    capture = FeatureCapture(net.encoder)
    x = torch.randn(*shape)
    with capture.active():
        net(x)
        bottleneck = capture.take_latest()
    assert bottleneck.shape[1] == 32 and bottleneck.shape[2:] != x.shape[2:]
    assert decoder(bottleneck).shape == x.shape


def test_decoder_mirrors_the_encoders_convolutions_per_stage():
    net = _unet(2)
    decoder = RegenerationDecoder(net.encoder, 1)
    assert [len(stage[0].convs) for stage in decoder.stages] == [2, 1, 3, 2]  # deepest stage first
    # no skip input: the decoder's only input is the bottleneck's 32 channels
    assert next(decoder.stages[0].parameters()).shape[1] == 32


def test_capture_only_inside_active_and_keeps_the_graph():
    net = _unet(2)
    capture = FeatureCapture(net.encoder)
    net(torch.randn(1, 1, 16, 16))
    assert capture.outputs == []
    with capture.active():
        with torch.no_grad():
            net(torch.randn(1, 1, 16, 16))  # e.g. CateNorm's mask pass before the trained pass
        x = torch.randn(1, 1, 16, 16)
        net(x)
        assert len(capture.outputs) == 2  # one capture per forward
        latest = capture.take_latest()
        assert latest.grad_fn is not None and capture.outputs == []
        torch.testing.assert_close(latest, net.encoder(x)[-1])
        latest.sum().backward()
        assert any(p.grad is not None for p in net.encoder.parameters())
    with pytest.raises(RuntimeError, match="did not run"):
        capture.take_latest()
    capture.remove()
    with capture.active():
        net(torch.randn(1, 1, 16, 16))
        assert capture.outputs == []


def test_capture_works_under_torch_compile():
    net = _unet(2)
    capture = FeatureCapture(net.encoder)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(1, 1, 16, 16)
    with capture.active():
        out = compiled(x)
        latest = capture.take_latest()
    torch.testing.assert_close(latest, net.encoder(x)[-1])
    assert out.shape == (1, 3, 16, 16)


def test_ill_encoder():
    with pytest.raises(TypeError, match="dynamic-network-architectures encoder"):
        RegenerationDecoder(nn.Conv2d(1, 1, 3), 1)
