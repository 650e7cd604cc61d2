"""Process groups for distributed training: ``torchrun`` launches, one process per rank.

``init_from_env`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), starts the default process group (NCCL on GPUs, gloo on CPUs) and
lays the ranks out on a 2-D ``DeviceMesh`` of shape (data, branch): ranks in the same
row own different branch groups of one model replica; ranks in the same column own
the same branches of different replicas and see different data.

``DistributedHook`` plugs that into the training loop without touching it: each data
replica trains on its shard of every batch, gradients are averaged over the data
dimension after backward, per-batch decisions (stop, save) are agreed on, only global
rank 0 writes files, and every rank's optimizer state is kept in the one
``train_state.pt`` so a resumed run continues exactly (with the same world layout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from paraformer.errors import CheckpointError, ConfigError
from paraformer.train.hooks import Hook

if TYPE_CHECKING:
    from paraformer.train.loop import Trainer


@dataclass
class DistributedContext:
    """This process's place in the (data x branch) layout of the world."""

    rank: int
    world: int
    branch_parallel: int
    data_parallel: int
    branch_rank: int
    data_rank: int
    branch_group: Any
    data_group: Any
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """This rank's share of ``model``: its branch group when the branches are split."""
        if self.branch_parallel == 1:
            return model
        from paraformer.parallel.branch import BranchParallel

        return BranchParallel(model, self.branch_group, self.branch_rank, self.branch_parallel)

    def hook(self) -> DistributedHook:
        return DistributedHook(self)


def launched_world() -> int:
    """The world size torchrun (or another launcher) set, 1 for a plain process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number.") from None


def init_from_env(branch_parallel: int, device: str = "auto") -> DistributedContext | None:
    """Join the process group torchrun set up; ``None`` when this is a plain single process."""
    world = launched_world()
    if world == 1:
        if branch_parallel > 1:
            raise ConfigError(
                f"--branch-parallel {branch_parallel} needs one process per rank: launch with "
                f"torchrun --nproc-per-node {branch_parallel} -m paraformer ..."
            )
        return None
    if branch_parallel < 1 or world % branch_parallel:
        raise ConfigError(
            f"--branch-parallel {branch_parallel} must divide the number of processes ({world}); the rest "
            "of the world is data parallel."
        )
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    dp = world // branch_parallel
    mesh = init_device_mesh(
        "cuda" if use_cuda else "cpu", (dp, branch_parallel), mesh_dim_names=("data", "branch")
    )
    coords = mesh.get_coordinate() or [0, 0]
    return DistributedContext(
        rank=rank,
        world=world,
        branch_parallel=branch_parallel,
        data_parallel=dp,
        branch_rank=coords[1],
        data_rank=coords[0],
        branch_group=mesh.get_group("branch"),
        data_group=mesh.get_group("data"),
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DistributedHook(Hook):
    """Data sharding, gradient averaging, agreed decisions and rank-0 writes for one process."""

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx

    def writes_files(self, trainer: Trainer) -> bool:
        return self.ctx.is_main

    def select_batch(self, trainer: Trainer, indices: torch.Tensor) -> torch.Tensor:
        return indices[self.ctx.data_rank :: self.ctx.data_parallel]

    def after_backward(self, trainer: Trainer) -> None:
        if self.ctx.data_parallel == 1:
            return
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce for all gradients
        dist.all_reduce(flat, group=self.ctx.data_group)
        flat /= self.ctx.data_parallel
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def agree(self, trainer: Trainer, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        votes = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in votes.tolist())

    def owns_optimizer_state(self) -> bool:
        return True

    def state_dict(self) -> dict[str, Any]:
        """Every rank's optimizer state, gathered (collective) so rank 0 can save them all."""
        states: list[Any] = [None] * self.ctx.world
        dist.all_gather_object(states, self.trainer.optimizer.state_dict())
        return {"world": [self.ctx.data_parallel, self.ctx.branch_parallel], "optimizers": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("world")
        now = [self.ctx.data_parallel, self.ctx.branch_parallel]
        if saved != now:
            raise CheckpointError(
                f"this run was saved with (data x branch) = {saved} processes; resume it with the same "
                f"layout (now {now}): torchrun --nproc-per-node {saved[0] * saved[1] if saved else '?'} ..."
            )
        self.trainer.optimizer.load_state_dict(state["optimizers"][self.ctx.rank])

    def bind(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def _comm_device(self) -> torch.device:
        return self.ctx.device if self.ctx.device.type == "cuda" else torch.device("cpu")
