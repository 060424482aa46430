"""What the trainers' DDP behaviour rests on, tested directly: gradients of nnU-Net's loss through DDP with
gloo, reductions on the backend's device, one seed per rank."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.core.continual_regularizers import FisherAccumulator
from nnunet_ext.core.odex import Calibration
from nnunet_ext.utils.seeding import rank_seed
from tests.ddp.harness import free_port

WORLD = 2


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(1, 3, 3, padding=1)


def _nnunet_loss(ddp: bool) -> nn.Module:
    """``nnUNetTrainer._build_loss`` for label (not region) training, without deep supervision."""
    return DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4, 1, 8, 8), generator=g).float())
            for _ in range(3)]


def _fisher_rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        net = _net()
        wrapped = DistributedDataParallel(net)
        loss = _nnunet_loss(ddp=True)
        through_ddp = FisherAccumulator(net.named_parameters())
        own_share = FisherAccumulator(net.named_parameters())
        for data, target in _batches():
            mine = slice(rank * 2, rank * 2 + 2)  # nnU-Net's split: each rank its part of the batch
            net.zero_grad()
            loss(wrapped(data[mine]), target[mine]).backward()  # DDP averages the gradients over the ranks
            through_ddp.accumulate(net.named_parameters())
            net.zero_grad()
            loss(net(data[mine]), target[mine]).backward()  # this rank's part of the gradient only
            own_share.accumulate(net.named_parameters())
        own_share.all_reduce()
        torch.save({"through_ddp": (through_ddp.count, through_ddp.fisher()),
                    "own_share": (own_share.count, own_share.fisher())}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fisher_through_ddp_is_the_whole_batch_fisher_of_one_process(tmp_path):
    """EWC's Fisher under DDP (``EWCMixin.estimate_fisher``): nnU-Net's DDP-aware Dice gathers the ranks'
    statistics and DDP averages the gradients, so each rank squares the gradient of the whole batch."""
    mp.spawn(_fisher_rank, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    net, loss = _net(), _nnunet_loss(ddp=False)
    single = FisherAccumulator(net.named_parameters())
    for data, target in _batches():
        net.zero_grad()
        loss(net(data), target).backward()
        single.accumulate(net.named_parameters())
    expected = single.fisher()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for result in ranks:
        count, fisher = result["through_ddp"]
        assert count == 3
        for name in expected:
            torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-8)
    # squaring each rank's part of the gradient and adding over the ranks is another (half-batch) estimate
    count, fisher = ranks[0]["own_share"]
    assert count == 6
    assert not torch.allclose(fisher["weight"], expected["weight"], rtol=0.05)


def test_calibration_hands_the_reduction_tensors_on_the_given_device():
    seen = []

    def reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
        seen.append((tensor.device.type, op))
        return torch.ones(tensor.shape, dtype=tensor.dtype)

    calibration = Calibration()
    calibration.update(torch.tensor([1.0, 3.0]))
    calibration.all_reduce(reduce, device="meta")  # NCCL reduces only tensors on the GPU
    assert seen == [("meta", "sum"), ("meta", "min"), ("meta", "max")]
    assert calibration.as_tensor().tolist() == [1.0, 1.0, 1.0]


def test_rank_seed_keeps_rank_0_and_gives_every_rank_of_every_seed_its_own_stream():
    assert [rank_seed(seed, 0) for seed in (0, 1, 7)] == [0, 1, 7]
    assert rank_seed(3, 2) == rank_seed(3, 2)
    assert len({rank_seed(seed, rank) for seed in range(4) for rank in range(4)}) == 16
