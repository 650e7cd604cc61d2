"""The settings of a continual-learning sequence: the tasks, the method and the method's options.

``ContinualConfig`` is frozen and validated like every config here; its fields' help texts
become the flags of ``paraformer continual``. A method option left at None takes the
method's default (``OPTIONS``); giving an option to a method it does not apply to is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from paraformer.config import require
from paraformer.continual.memory import SELECTIONS
from paraformer.continual.predict import ROUTINGS
from paraformer.errors import ConfigError
from paraformer.fields import check_fields, from_mapping
from paraformer.train.config import option

METHODS = ("expand", "finetune", "joint", "lwf", "er", "derpp")
ALIGNS = ("none", "weights", "finetune")
REPLAY = ("er", "derpp", "expand")

# option -> (the methods it applies to, its default per method)
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "buffer": (REPLAY, {"er": 200, "derpp": 200, "expand": 0}),
    "selection": (REPLAY, {m: "balanced" for m in REPLAY}),
    "replay_batch": (REPLAY, {m: 32 for m in REPLAY}),
    "distill": (("lwf", "expand"), {"lwf": 1.0, "expand": 1.0}),
    "temperature": (("lwf", "expand"), {"lwf": 2.0, "expand": 2.0}),
    "derpp_alpha": (("derpp",), {"derpp": 0.1}),
    "derpp_beta": (("derpp",), {"derpp": 0.5}),
    "add_branches": (("expand",), {"expand": 1}),
    "aux_weight": (("expand",), {"expand": 1.0}),
    "align": (("expand",), {"expand": "weights"}),
    "align_epochs": (("expand",), {"expand": 2}),
    "routing": (("expand",), {"expand": "none"}),
    "gate_lr": (("expand",), {"expand": 20.0}),
    "branch_init": (("expand",), {"expand": "random"}),
}
BRANCH_INITS = ("random", "copy")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ContinualConfig:
    """A class-incremental sequence: ``tasks`` tasks of ``classes_per_task`` classes, one method."""

    method: str = option("expand", "the continual-learning method", choices=METHODS)
    tasks: int = option(5, "number of tasks in the sequence")
    classes_per_task: int | None = option(
        None, "classes per task (default: the dataset's classes divided by --tasks)", metavar="C"
    )
    class_order: tuple[int, ...] | None = option(
        None,
        "the order in which classes arrive (default 0,1,2,...); task 1 gets the first C",
        metavar="I,J,...",
    )
    limit_test: int | None = option(
        None, "test on N images in all (class-balanced, the same for every seed)", metavar="N"
    )
    buffer: int | None = option(
        None, "replay memory in stored images (er, derpp: default 200; expand: default 0, none)", metavar="N"
    )
    selection: str | None = option(
        None,
        "which images the memory keeps: balanced (random per class) or herding (iCaRL)",
        choices=SELECTIONS,
    )
    replay_batch: int | None = option(None, "stored images added to every batch (default 32)", metavar="N")
    distill: float | None = option(
        None,
        "weight of distilling the previous model's logits of the old classes (lwf, expand: 1; 0 = off)",
        metavar="W",
    )
    temperature: float | None = option(None, "distillation temperature (default 2)", metavar="T")
    derpp_alpha: float | None = option(
        None, "DER++: weight of the stored-logit MSE (default 0.1)", metavar="A"
    )
    derpp_beta: float | None = option(
        None, "DER++: weight of the stored samples' labels (default 0.5)", metavar="B"
    )
    add_branches: int | None = option(None, "expand: branches added per new task (default 1)", metavar="M")
    aux_weight: float | None = option(
        None,
        "expand: weight of the auxiliary head on the new branches (new classes + 'old'; default 1, 0 = off)",
        metavar="W",
    )
    align: str | None = option(
        None,
        "expand: after each task, weights (norm-match new and old classes' head rows, default), finetune "
        "(a class-balanced fine-tune of head and gates on the memory) or none",
        choices=ALIGNS,
    )
    align_epochs: int | None = option(None, "expand: epochs of --align finetune (default 2)", metavar="E")
    routing: str | None = option(
        None,
        "expand: predict without a task id through the prefix whose classes fit best: maxlogit, aux (the "
        "auxiliary heads' 'old' class; needs --buffer) or none (the model's head, default)",
        choices=ROUTINGS,
    )
    gate_lr: float | None = option(
        None, "expand: learning-rate multiplier of the new branches' gates (default 20; 1 = off)", metavar="X"
    )
    branch_init: str | None = option(
        None,
        "expand: new branches start random (default) or as copies of the newest old branch (their gates "
        "still start at 0)",
        choices=BRANCH_INITS,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}.")
        require(1 <= self.tasks <= 10_000, f"tasks must be an integer >= 1, got {self.tasks!r}.")
        for name in ("classes_per_task", "limit_test", "replay_batch", "add_branches", "align_epochs"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{flag(name)} must be an integer >= 1, got {value!r}.")
        require(self.buffer is None or self.buffer >= 0, f"--buffer must be >= 0, got {self.buffer!r}.")
        order = self.class_order
        require(
            order is None or (len(order) > 0 and len(set(order)) == len(order) and min(order) >= 0),
            f"--class-order must list distinct class indices >= 0, got {order!r}.",
        )
        for name in ("distill", "aux_weight", "derpp_alpha", "derpp_beta"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{flag(name)} must be >= 0, got {value!r}.")
        for name in ("temperature", "gate_lr"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{flag(name)} must be > 0, got {value!r}.")
        for name, (methods, _) in OPTIONS.items():
            if getattr(self, name) is not None and self.method not in methods:
                which = ", ".join(methods)
                raise ConfigError(
                    f"{flag(name)} does not apply to --method {self.method}; it is an option of --method "
                    f"{which}."
                )
        self._check_combinations()

    def _check_combinations(self) -> None:
        get = self.get
        if self.method in ("er", "derpp"):
            require(
                get("buffer") >= 1, f"--method {self.method} replays stored images: --buffer must be >= 1."
            )
        if self.method == "expand" and get("buffer") == 0:
            for name in ("selection", "replay_batch"):
                require(getattr(self, name) is None, f"{flag(name)} needs a replay memory: add --buffer N.")
            require(
                get("align") != "finetune", "--align finetune trains on the replay memory: add --buffer N."
            )
            require(
                get("routing") != "aux",
                "--routing aux learns the 'old' class from the memory: add --buffer N.",
            )
        if self.method == "expand":
            require(
                self.align_epochs is None or get("align") == "finetune",
                "--align-epochs sets the length of --align finetune; add --align finetune or drop it.",
            )
            require(get("routing") != "aux" or get("aux_weight") > 0, "--routing aux needs --aux-weight > 0.")
        if self.method in ("lwf", "expand"):
            require(
                self.temperature is None or get("distill") > 0,
                "--temperature needs distillation (--distill > 0).",
            )

    def get(self, name: str) -> Any:
        """An option's value: the one given, else the method's default (None where it does not apply)."""
        value = getattr(self, name)
        if value is not None:
            return value
        methods, defaults = OPTIONS[name]
        return defaults.get(self.method)

    def resolved(self) -> dict[str, Any]:
        """Every option that applies to the method, with the value it takes."""
        return {name: self.get(name) for name, (methods, _) in OPTIONS.items() if self.method in methods}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> ContinualConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any, what: str = "continual config") -> ContinualConfig:
        return from_mapping(cls, data, what)
