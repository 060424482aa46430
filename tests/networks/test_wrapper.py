"""The plans-network wrapper: stock keys both ways, deep supervision, train/eval, blank patches, helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from torch import nn

from nnunet_ext.networks.wrapper import (
    PlansNetworkWrapper,
    blank_patches,
    moves_nothing,
    near_constant_channels,
    run_per_group,
)


def plans_unet(dims: int, seed: int = 0, deep_supervision: bool = False) -> PlainConvUNet:
    """A tiny nnU-Net plans network (what get_network_from_plans builds for the default plans)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    return PlainConvUNet(1, 3, (4, 8, 8), conv, 3, (1, 2, 2), (1, 1, 1), 3, (1, 1), conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


class Doubled(PlansNetworkWrapper):
    """A toy method: eval-mode logits times a saved factor."""

    def __init__(self, net: nn.Module, factor: float = 2.0):
        super().__init__(net)
        self.register_buffer("factor", torch.tensor(factor))

    def test_time_forward(self, x):
        out = self.net(x)
        return [o * self.factor for o in out] if isinstance(out, (list, tuple)) else out * self.factor


class DoubledLater(Doubled):
    optional_entries = ("factor",)  # as if checkpoints from before the factor existed were in the wild


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_and_train_eval_behaviour(dims):
    net = Doubled(plans_unet(dims))
    x = torch.randn((2, 1) + (8,) * dims)
    with torch.no_grad():
        train_out = net.train()(x)
        assert net.net.training and all(m.training for m in net.net.modules())
        torch.testing.assert_close(train_out, net.net(x))  # training: the plans network itself
        eval_out = net.eval()(x)
        assert not any(m.training for m in net.modules())
        assert eval_out.shape == (2, 3) + (8,) * dims
        torch.testing.assert_close(eval_out, 2 * net.net(x))  # eval: the method
        net.enabled = False
        torch.testing.assert_close(net(x), net.net(x))  # runtime switch off: the plans network


@pytest.mark.parametrize("dims", [2, 3])
def test_state_dict_has_the_plans_keys_then_the_method_entries(dims):
    net, stock = Doubled(plans_unet(dims)), plans_unet(dims, seed=1)
    assert list(net.state_dict()) == [*stock.state_dict(), "factor"]
    assert not any(k.startswith("net.") for k in net.state_dict())
    assert list(net.plans_state_dict()) == list(stock.state_dict())
    assert [net.is_method_key(k) for k in net.state_dict()] == [False] * len(stock.state_dict()) + [True]


def test_stock_checkpoint_into_the_wrapper_and_back(tmp_path):
    stock, net = plans_unet(2, seed=1), DoubledLater(plans_unet(2), factor=3.0)
    net.load_state_dict(stock.state_dict())  # strict: the optional method entry keeps its build-time value
    assert float(net.factor) == 3.0
    for k, v in stock.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    back = plans_unet(2, seed=2)
    back.load_state_dict(net.plans_state_dict())  # strict
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), stock.eval()(x))
        torch.testing.assert_close(net.eval()(x), 3.0 * stock(x))
    # a wrapper checkpoint through a file, into a fresh wrapper built with another default: the saved value wins
    saved = Doubled(plans_unet(2, seed=3), factor=5.0)
    torch.save({"network_weights": saved.state_dict()}, tmp_path / "ckpt.pth")
    fresh = Doubled(plans_unet(2, seed=4), factor=2.0)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pth", weights_only=True)["network_weights"])
    assert float(fresh.factor) == 5.0


def test_missing_and_unexpected_entries_are_named_as_a_checkpoint_has_them():
    net = Doubled(plans_unet(2))
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "factor"'):
        net.load_state_dict(plans_unet(2).state_dict())  # not optional: a strict load needs it
    state = net.state_dict()
    del state["decoder.seg_layers.0.weight"]
    state["encoder.extra"] = torch.zeros(1)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["decoder.seg_layers.0.weight"] and result.unexpected_keys == ["encoder.extra"]


def test_loading_never_changes_the_callers_mapping():
    net = Doubled(plans_unet(2))
    state = plans_unet(2, seed=1).state_dict()
    state["factor"] = torch.tensor(4.0)
    keys = list(state)
    net.load_state_dict(state)
    assert list(state) == keys and float(net.factor) == 4.0


def test_pretrained_weights_from_a_stock_checkpoint_while_the_method_state_is_hidden(tmp_path):
    stock = plans_unet(2, seed=1)
    torch.save({"network_weights": stock.state_dict()}, tmp_path / "stock.pth")
    net = Doubled(plans_unet(2), factor=3.0)
    net.hide_method_state = True
    assert list(net.state_dict()) == list(stock.state_dict())
    load_pretrained_weights(net, str(tmp_path / "stock.pth"))  # nnUNetv2_train -pretrained_weights
    net.hide_method_state = False
    assert float(net.factor) == 3.0 and "factor" in net.state_dict()
    for k, v in stock.state_dict().items():
        if ".seg_layers." not in k:  # nnU-Net does not transfer the segmentation heads
            assert torch.equal(net.state_dict()[k], v), k


def test_deep_supervision_switch_reaches_the_plans_decoder():
    net = Doubled(plans_unet(2, deep_supervision=False))
    assert net.decoder is net.net.decoder and net.encoder is net.net.encoder
    net.decoder.deep_supervision = True  # what nnUNetTrainer.set_deep_supervision_enabled does
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        train_out, eval_out = net.train()(x), net.eval()(x)
    assert isinstance(train_out, list) and len(train_out) == 2
    assert isinstance(eval_out, list) and [o.shape[-1] for o in eval_out] == [16, 8]
    net.decoder.deep_supervision = False
    assert isinstance(net(x), torch.Tensor)


def test_nested_copied_and_moved_wrappers_keep_the_layout():
    holder = nn.ModuleList([Doubled(plans_unet(2))])
    keys = list(holder.state_dict())
    assert keys[0].startswith("0.encoder.") and keys[-1] == "0.factor"
    other = nn.ModuleList([Doubled(plans_unet(2, seed=5))])
    other.load_state_dict(holder.state_dict())  # strict, hooks work at any depth
    torch.testing.assert_close(other[0].decoder.seg_layers[0].weight, holder[0].decoder.seg_layers[0].weight)
    clone = copy.deepcopy(holder[0])
    assert list(clone.state_dict()) == list(holder[0].state_dict())
    clone.load_state_dict(holder[0].state_dict())
    clone.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in clone.net.parameters())


def test_a_clash_between_plans_and_method_entries_is_refused():
    class Clash(Doubled):
        def __init__(self, net):
            super().__init__(net)
            self.register_buffer("scale", torch.tensor(1.0))

    plans = plans_unet(2)
    plans.register_buffer("scale", torch.tensor(2.0))
    with pytest.raises(RuntimeError, match="scale"):
        Clash(plans).state_dict()


@pytest.mark.parametrize("dims", [2, 3])
def test_blank_patches_get_the_plain_output_the_others_the_method(dims):
    net = Doubled(plans_unet(dims)).eval()
    shape = (1,) + (8,) * dims
    g = torch.Generator().manual_seed(0)
    batch = torch.stack([torch.zeros(shape), torch.randn(shape, generator=g), torch.full(shape, 3.5),
                         2.0 + 1e-8 * torch.randn(shape, generator=g)])
    with torch.no_grad():
        out = net(batch)
        plain = torch.cat([net.net(batch[i:i + 1]) for i in range(4)])
    for i, blank in enumerate([True, False, True, True]):
        # a batch of 4 and single samples take different float32 convolution paths on some CPUs (seen: 2.5e-5
        # apart in 3D); the method's factor 2 is far outside this tolerance
        torch.testing.assert_close(out[i], plain[i] if blank else 2 * plain[i], atol=1e-4, rtol=1e-4)


def test_near_constant_channels_limits():
    x = torch.randn(3, 2, 8, 8)
    x[0] = 0.0
    x[1, 0] = 1e6  # large constants count (the tolerance is relative)
    x[2, 1] = 5.0 + 1e-3 * torch.randn(8, 8)  # a faint texture is content
    assert near_constant_channels(x).tolist() == [[True, True], [True, False], [False, False]]
    assert blank_patches(x).tolist() == [True, False, False]
    assert not near_constant_channels(torch.full((1, 1, 4, 4), float("nan"))).any()
    assert blank_patches(torch.ones(2, 1, 4, 4, 4)).tolist() == [True, True]


def test_run_per_group_keeps_the_sample_order_and_deep_supervision_lists():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    out = run_per_group(x, [1, 0, 1, 2, 0], lambda g, xs: xs * 10 + g)
    assert out.flatten().tolist() == [1.0, 10.0, 21.0, 32.0, 40.0]
    lists = run_per_group(x, [0, 1, 0, 1, 0], lambda g, xs: [xs + g, xs - g])
    assert [t.flatten().tolist() for t in lists] == [[0.0, 2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0, 4.0]]
    calls = []
    run_per_group(x, [3] * 5, lambda g, xs: calls.append(len(xs)) or xs)
    assert calls == [5]  # one group: one call on the whole batch


def test_moves_nothing_parses_like_tensor_to():
    net = Doubled(plans_unet(2))
    assert moves_nothing(net, "cpu") and moves_nothing(net, torch.device("cpu"), non_blocking=True)
    assert moves_nothing(net, torch.float32) and moves_nothing(net, dtype=torch.float32)
    assert moves_nothing(net, torch.zeros(1))  # Module.to(tensor): that tensor's device and dtype
    assert not moves_nothing(net, torch.float64) and not moves_nothing(net, torch.zeros(1, dtype=torch.float64))
    assert not moves_nothing(net, memory_format=torch.channels_last)
    assert moves_nothing(nn.Sequential(nn.Embedding(2, 2).requires_grad_(False)).half(), torch.float16)
