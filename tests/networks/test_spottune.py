"""SpotTUNet: frozen and fine-tuned copies per layer, chosen per image by the policy; plain weights load into both."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.networks.spottune import SpotTUNet, spot_layer_names


def _unet(dims: int) -> PlainConvUNet:
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    return PlainConvUNet(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), 2, 3, (2, 2), True, norm, {"affine": True}, None, None,
                         nn.LeakyReLU, {"inplace": True}, deep_supervision=True)


def _force(net: SpotTUNet, frozen: bool) -> None:
    """Make the policy choose the frozen (or the tuned) copy for every layer and image."""
    with torch.no_grad():
        net.policy.head.weight.zero_()
        net.policy.head.bias.copy_(torch.tensor([0.0, 50.0] if frozen else [50.0, 0.0]).repeat(len(net.layer_names)))


@pytest.mark.parametrize("dims", [2, 3])
def test_with_equal_copies_the_output_is_the_plain_networks_whatever_the_policy(dims):
    torch.manual_seed(0)
    unet = _unet(dims)
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    x = torch.randn(2, 1, *([16] * dims))
    reference = unet.eval()(x)
    net = SpotTUNet(unet, unet.encoder.conv_op, 1)
    net.load_plain_state_dict(plain)
    net.eval()
    out = net(x)
    assert [o.shape for o in out] == [r.shape for r in reference]
    assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out, reference, strict=True))
    assert net.last_gates.shape == (2, len(spot_layer_names(_unet(dims))))


def test_the_gates_pick_the_frozen_or_the_tuned_copy():
    torch.manual_seed(0)
    unet = _unet(2)
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    x = torch.randn(2, 1, 16, 16)
    reference = unet.eval()(x)[0]
    net = SpotTUNet(unet, nn.Conv2d, 1).eval()
    net.load_plain_state_dict(plain)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".tuned." in name:
                p.add_(0.1)
    _force(net, frozen=True)
    assert torch.allclose(net(x)[0], reference, atol=1e-5)  # every layer from the source copy
    assert bool(net.last_gates.all())
    _force(net, frozen=False)
    assert not torch.allclose(net(x)[0], reference, atol=1e-3)
    assert not bool(net.last_gates.any())


def test_frozen_copies_never_train_and_the_policy_gets_gradients_through_the_gumbel_sample():
    torch.manual_seed(0)
    net = SpotTUNet(_unet(2), nn.Conv2d, 1).train()
    assert all(not p.requires_grad for n, p in net.named_parameters() if ".frozen." in n)
    out = net(torch.randn(2, 1, 16, 16))
    (out[0].mean() + (1 - net.last_gates).sum()).backward()
    assert net.policy.head.weight.grad is not None and net.policy.head.weight.grad.abs().sum() > 0
    assert set(net.last_gates.detach().unique().tolist()) <= {0.0, 1.0}


def test_a_rebuilt_network_loads_the_state_dict_strictly_and_keeps_deep_supervision_switchable():
    torch.manual_seed(0)
    a, b = SpotTUNet(_unet(2), nn.Conv2d, 1), SpotTUNet(_unet(2), nn.Conv2d, 1)
    b.load_state_dict(a.state_dict())  # what nnU-Net's predictor does with the checkpoint
    a.decoder.deep_supervision = False
    assert isinstance(a.eval()(torch.randn(1, 1, 16, 16)), torch.Tensor)


def test_weights_of_another_architecture_are_refused():
    net = SpotTUNet(_unet(2), nn.Conv2d, 1)
    other = PlainConvUNet(1, 2, (4, 8), nn.Conv2d, 3, (1, 2), 2, 3, 1, True, nn.InstanceNorm2d, {"affine": True},
                          None, None, nn.LeakyReLU, {"inplace": True})
    with pytest.raises(RuntimeError, match="another architecture|does not"):
        net.load_plain_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="no ConvDropoutNormReLU"):
        SpotTUNet(nn.Sequential(nn.Conv2d(1, 1, 1)), nn.Conv2d, 1)
