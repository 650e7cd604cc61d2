"""One rank of the distributed tests, launched by ``torch.distributed.run`` from test_parallel.py.

Each rank builds the same tiny ParaFormer, takes its share through ``apply_execution``
(a branch group, plus a data shard when the world is larger than the branch split),
runs a plain forward, a prefix forward and the fused all-prefix loss on one batch,
and writes its losses and gradients, under the single-process parameter names, to
``OUT/rank<r>.safetensors`` for the test to compare with one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from paraformer.models import create_model
from paraformer.parallel.apply import apply_execution
from paraformer.parallel.distributed import init_from_env, shutdown

TINY = dict(image_size=8, patch_size=4, in_channels=3, num_classes=5, dim=12, heads=3, mlp_dim=24)


def tiny_model(branches: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("paraformer_tiny_cifar", **TINY, num_branches=branches, branch_depth=2)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def objectives(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three losses a training step can take: full sum, a prefix, all prefixes (fused).

    Logits may carry a sequence dimension (language models): every position is scored.
    """

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2), y.flatten())

    return {
        "full": ce(model(x)),
        "prefix2": ce(model(x, branches=2)),
        "fused": torch.stack([ce(p) for p in model.prefix_logits(x)]).mean(),
    }


def reference_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients under the single-process parameter names, whatever the execution path or rank."""
    start = getattr(model, "start", 0)  # a rank's first branch under branch parallelism
    out = {}
    for name, p in model.named_parameters():
        name = name.removeprefix("local.")
        if p.grad is None:
            continue
        if name.startswith("branches."):
            i, rest = name.split(".", 2)[1:]
            out[f"branches.{start + int(i)}.{rest}"] = p.grad
        else:
            out[name] = p.grad
    return out


def main(out: Path, branch_parallel: int, exec_path: str) -> None:
    ctx = init_from_env(branch_parallel)
    assert ctx is not None, "launch with torch.distributed.run"
    x, y = batch()
    model = apply_execution(tiny_model(), exec_path, x, ctx=ctx, log=lambda _: None)
    shard = ctx.shard(torch.arange(len(y)))
    result: dict[str, torch.Tensor] = {}
    for name, loss in objectives(model, x[shard], y[shard]).items():
        model.zero_grad(set_to_none=True)
        loss.backward()
        ctx.average_gradients(list(model.parameters()))
        result[f"{name}/loss"] = loss.detach()
        result.update({f"{name}/{k}": g.detach().clone() for k, g in reference_grads(model).items()})
    state = model.state_dict()  # collective: the full model, single-process names
    if ctx.is_main:
        result.update({f"state/{k}": v for k, v in state.items()})
    save_file({k: v.contiguous() for k, v in result.items()}, str(out / f"rank{ctx.rank}.safetensors"))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
