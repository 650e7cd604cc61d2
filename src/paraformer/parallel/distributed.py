"""Process groups for distributed training: ``torchrun`` launches, one process per rank.

``init_from_env`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), starts the default process group (NCCL on GPUs, gloo on CPUs) and
lays the ranks out on a 2-D ``DeviceMesh`` of shape (data, branch): ranks in the same
row own different branch groups of one model replica; ranks in the same column own
the same branches of different replicas and see different data.

``DistributedContext`` offers what a training run needs from the layout, as plain
operations: the shard of a batch a data replica trains on, gradient averaging over the
data dimension, agreement on per-batch decisions (stop, save), sums over the branch
dimension (per-layer statistics), gathering every rank's optimizer state, and, when a
collective fails, which ranks are gone. ``paraformer.launch`` plugs these into the
training loop; this module knows nothing of the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from paraformer.errors import ConfigError
from paraformer.parallel.branch import BranchParallel


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
        return BranchParallel(model, self.branch_group, self.branch_rank, self.branch_parallel)

    # -- what a training run asks of the layout ---------------------------------------------
    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """The samples of a batch this data replica trains on."""
        return indices[self.data_rank :: self.data_parallel]

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average the gradients over the data replicas (one all-reduce for all of them)."""
        if self.data_parallel == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.data_group)
        flat /= self.data_parallel
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def agree(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """Each flag true on every rank if it is true on any (stop and save together)."""
        votes = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in votes.tolist())

    def sum_over_branches(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks that share one model replica (a per-layer figure)."""
        if self.branch_parallel == 1:
            return values
        out = values.to(self._comm_device()).clone()
        dist.all_reduce(out, group=self.branch_group)
        return out.to(values.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (in memory, between our own processes)."""
        objects: list[Any] = [None] * self.world
        dist.all_gather_object(objects, obj)
        return objects

    @property
    def layout(self) -> list[int]:
        return [self.data_parallel, self.branch_parallel]

    def lost_ranks(self) -> list[int] | None:
        """After a failed collective: the ranks whose process is gone (on this machine), if known."""
        store = getattr(self, "_store", None)
        if store is None:
            return None
        lost = []
        for rank in range(self.world):
            try:
                pid = int(store.get(f"paraformer/pid/{rank}"))
            except Exception:  # noqa: BLE001 - the store itself may be gone with its host
                return None
            if not _alive(pid):
                lost.append(rank)
        return lost

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


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
    ctx = DistributedContext(
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
    try:  # so that survivors of a lost rank can say which one it was (same machine)
        store = dist.distributed_c10d._get_default_store()
        store.set(f"paraformer/pid/{rank}", str(os.getpid()))
        ctx._store = store
    except Exception:  # noqa: BLE001 - a private API: without it, lost ranks are just not named
        pass
    return ctx


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a killed child not yet reaped is a zombie: not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
