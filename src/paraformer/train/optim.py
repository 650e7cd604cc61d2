"""The optimizer step: optimizer, learning-rate schedule, clipping and the step hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paraformer.errors import TrainingError
from paraformer.train.config import LoopConfig
from paraformer.train.hooks import Hook
from paraformer.train.schedule import warmup_cosine


def make_optimizer(
    model: nn.Module, cfg: LoopConfig, extra_groups: Sequence[dict[str, Any]] = ()
) -> torch.optim.Optimizer:
    """AdamW (or the authors' plain Adam) over the trainable parameters, no decay on norms etc.

    ``extra_groups`` (an objective's parts: their own heads, or model parameters at a scaled
    learning rate, ``lr_scale``) come after the model's groups; a model parameter in one of
    them leaves the default groups.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    claimed = {id(p) for group in extra_groups for p in group["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in claimed]
    decay = [p for n, p in named if n not in skip]
    no_decay = [p for n, p in named if n in skip]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for group in extra_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            groups.append({"weight_decay": cfg.weight_decay, **group, "params": params})
    # One fused kernel per step instead of several per tensor: fewer launches on a GPU.
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; keep the authors' plain Adam when asked.
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


class Stepper:
    """Backward, hooks, clip and one optimizer step for a loss; counts the steps taken.

    A non-finite loss or gradient norm stops training with advice instead of
    poisoning the weights.
    """

    def __init__(
        self,
        trainer: object,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: LoopConfig,
        total_steps: int,
        warmup_steps: int,
        hooks: Hook,
    ) -> None:
        self.trainer = trainer
        self.model = model
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.hooks = hooks
        self.step = 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        known = {id(p) for p in self.params}  # then the objective's own parameters (its heads)
        self.params += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in known]

    def lr(self) -> float:
        cfg = self.cfg
        return warmup_cosine(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr_ratio)

    def diverged(self, what: str) -> TrainingError:
        history = getattr(self.trainer, "history", [])
        saved = "; nothing was saved"
        if history:
            saved = f"; the checkpoint of epoch {history[-1]['epoch']} in {self.trainer.folder.path} is kept"
        return TrainingError(
            f"training diverged: {what} at optimizer step {self.step}{saved}. "
            f"Start a new run with a lower learning rate (now {self.cfg.lr:g}) or keep --grad-clip on."
        )

    def __call__(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise self.diverged(f"the loss became {loss.item()}")
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.hooks.after_backward(self.trainer)
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            if not torch.isfinite(norm):
                raise self.diverged(f"the gradient norm became {norm.item()}")
        self.hooks.before_step(self.trainer)
        self.optimizer.step()
        self.step += 1
