"""Continual learning in the library: every method through the trainer, expansion's parts, memory,
routing, weight aligning, resuming, and ``paraformer continual`` with its one-line errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from paraformer.checkpoint import load_model
from paraformer.cli import main
from paraformer.continual import METHODS, ContinualConfig, resume_continual, run_continual
from paraformer.continual.memory import class_quota, herding_order, memory_record, sample_bytes, update_memory
from paraformer.continual.parts import GroupHead
from paraformer.continual.predict import AuxHeads, Experts, align_weights, predict
from paraformer.errors import ConfigError
from paraformer.models import create_model
from paraformer.tasks.image import TrainConfig

TINY = {"dim": 16, "heads": 2, "mlp_dim": 32, "num_branches": 2, "branch_depth": 1}


def train_cfg(**changes) -> TrainConfig:
    base = dict(
        dataset="embedded",
        limit_train=240,
        epochs=1,
        batch_size=32,
        lr=3e-3,
        device="cpu",
        branch_exec="loop",
        model="paraformer_tiny_fmnist",
        model_overrides=TINY,
    )
    return TrainConfig(**{**base, **changes})


def two_tasks(method: str, **options) -> ContinualConfig:
    return ContinualConfig(method=method, tasks=2, classes_per_task=2, limit_test=100, **options)


# ------------------------------------------------------------------------------ every method


@pytest.mark.parametrize(
    "method, options",
    [(m, {}) for m in METHODS if m not in ("er", "derpp")]
    + [("er", {"buffer": 40}), ("derpp", {"buffer": 40, "selection": "herding"})]
    + [("expand", {"buffer": 40, "routing": "aux", "align": "finetune", "align_epochs": 1})],
)
def test_each_method_runs_a_two_task_sequence_through_the_trainer(
    tmp_path: Path, method: str, options: dict
) -> None:
    out = tmp_path / "run"
    r = run_continual(two_tasks(method, **options), train_cfg(), out, log=lambda line: None)
    seed = r["seeds"]["0"]
    for key in ("class_il", "task_il"):
        m = seed["test"][key]
        assert len(m) == 2 and m[0][1] is None and all(0 <= v <= 1 for v in (m[0][0], m[1][0], m[1][1]))
    assert seed["budget"]["optimizer_steps"] > 0 and seed["train_seconds"] > 0
    assert (out / "results.json").is_file() and (out / "heatmap.png").is_file()
    assert json.loads((out / "continual.json").read_text())["data"]["class_order"] == [0, 1, 2, 3]
    stored = options.get("buffer", 0)
    assert seed["memory"]["stored_samples"] == stored
    if method in ("finetune", "joint", "lwf", "er", "derpp"):
        assert seed["memory"]["added_params"] == 0 and seed["branches"] == 2
    else:
        assert seed["branches"] == 3 and seed["memory"]["added_params"] > 0


def test_the_first_task_is_the_same_for_every_method(tmp_path: Path) -> None:
    a = run_continual(two_tasks("finetune"), train_cfg(), tmp_path / "a", log=lambda line: None)
    b = run_continual(
        two_tasks("expand"),
        train_cfg(),
        tmp_path / "b",
        log=lambda line: None,
        first_task_from=tmp_path / "a",
    )
    c = run_continual(two_tasks("lwf"), train_cfg(), tmp_path / "c", log=lambda line: None)
    assert a["seeds"]["0"]["test"]["class_il"][0] == c["seeds"]["0"]["test"]["class_il"][0]
    assert b["seeds"]["0"]["test"]["class_il"][0] == a["seeds"]["0"]["test"]["class_il"][0]
    progress = json.loads((tmp_path / "b" / "seed-0" / "progress.json").read_text())
    assert progress["tasks"][0]["reused_first_task"] and not progress["tasks"][1]["reused_first_task"]
    first_a = load_model(tmp_path / "a" / "seed-0" / "after-task-0").state_dict()
    first_c = load_model(tmp_path / "c" / "seed-0" / "after-task-0").state_dict()
    assert all(torch.equal(first_a[k], first_c[k]) for k in first_a)


def test_expansion_leaves_the_frozen_base_bit_identical_and_the_gates_open(tmp_path: Path) -> None:
    gates = {}
    for scale in (1.0, 20.0):
        out = tmp_path / f"g{scale:g}"
        r = run_continual(
            two_tasks("expand", gate_lr=scale, align="none"), train_cfg(epochs=2), out, log=lambda s: None
        )
        before = load_model(out / "seed-0" / "after-task-0").state_dict()
        after = load_model(out / "seed-0" / "after-task-1").state_dict()
        frozen = [k for k in before if k.startswith(("embed.", "branches.0.", "branches.1."))]
        assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
        assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])
        gates[scale] = abs(r["seeds"]["0"]["gates"][-1][0])
    assert gates[20.0] > 5 * gates[1.0], gates  # the fix moves the gate off zero


# ------------------------------------------------------------------------------ memory


def test_memory_is_class_balanced_shrinks_old_classes_and_counts_bytes() -> None:
    assert class_quota([0, 1, 2], 10) == {0: 4, 1: 3, 2: 3}
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (60, 1, 4, 4), dtype=torch.uint8)
    labels = torch.tensor([0] * 30 + [1] * 30)
    mem = update_memory(None, images, labels, 20, generator=gen)
    assert torch.bincount(mem.labels).tolist() == [10, 10]
    more = update_memory(mem, images, labels + 2, 20, generator=gen, logits=None)
    assert torch.bincount(more.labels).tolist() == [5, 5, 5, 5]
    assert torch.equal(more.inputs[:5], mem.inputs[:5])  # an old class keeps its best-ranked first
    assert mem.nbytes == 20 * (16 + 8) == 20 * sample_bytes((1, 4, 4))
    with_logits = update_memory(None, images, labels, 6, logits=lambda x: torch.ones(len(x), 10))
    assert with_logits.nbytes == 6 * sample_bytes((1, 4, 4), logits=10)
    record = memory_record(mem, added_params=100)
    assert record == {
        "stored_samples": 20,
        "stored_bytes": 480,
        "added_params": 100,
        "added_param_bytes": 400,
        "total_bytes": 880,
    }


def test_herding_picks_the_samples_whose_mean_is_closest_to_the_class_mean() -> None:
    feats = torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [-1.0, 0.0]])
    order = herding_order(feats, 2)
    assert order[0].item() == 2  # alone, the sample nearest the mean
    assert len(set(order.tolist())) == 2


# ------------------------------------------------------------------------------ routing, aligning


class Stub(nn.Module):
    """Two branches that each pass two of four input features: a model whose prefixes are known."""

    cfg = None

    def __init__(self) -> None:
        super().__init__()
        self.masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
        self.fc = nn.Linear(4, 4)

    @property
    def branches(self) -> Stub:
        return self

    @property
    def num_branches(self) -> int:
        return 2

    def prefix_logits(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), 1, 4)  # (B, 1, D)

    def outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([tokens * m for m in self.masks])  # (2, B, 1, D)

    def head_input(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def head_logits(self, summed: torch.Tensor) -> torch.Tensor:
        return self.fc(summed[:, 0])


def picking_head(features: list[int], outputs: int, old_bias: float | None = None) -> GroupHead:
    head = GroupHead(4, outputs)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
        for row, f in enumerate(features):
            head.fc.weight[row, f] = 10.0
        if old_bias is not None:
            head.fc.bias[-1] = old_bias
    return head


def test_routing_picks_the_prefix_whose_classes_fit() -> None:
    model = Stub()
    experts = Experts([1, 2], [picking_head([0, 1], 2), picking_head([2, 3], 2)])
    aux = AuxHeads([(1, 2)], [picking_head([2, 3], 3, old_bias=5.0)])
    x = torch.tensor([[1.0, -1, 0, 0], [-1.0, 1, 0, 0], [0, 0, 1.0, -1], [0, 0, -1.0, 1]])
    labels = torch.tensor([0, 1, 2, 3])
    tasks = torch.tensor([0, 0, 1, 1])
    for routing in ("maxlogit", "aux"):
        p = predict(model, x, tasks, 2, 2, routing=routing, experts=experts, aux=aux)
        assert p.class_il.tolist() == labels.tolist(), routing
        assert p.task_il.tolist() == labels.tolist()
    with pytest.raises(ConfigError, match="routing"):
        predict(model, x, tasks, 2, 2, routing="nearest")


def test_weight_aligning_equalises_the_norms_of_old_and_new_rows() -> None:
    model = create_model("paraformer_tiny_fmnist", **TINY, num_classes=4)
    with torch.no_grad():
        model.head.fc.weight[2:] *= 3
    aligned, gamma = align_weights(model, range(0, 2), range(2, 4))
    norms = aligned.head.fc.weight.norm(dim=1)
    assert norms[:2].mean().item() == pytest.approx(norms[2:].mean().item(), rel=1e-5)
    assert torch.equal(aligned.head.fc.weight[:2], model.head.fc.weight[:2]) and gamma < 1
    assert not torch.equal(aligned.head.fc.weight[2:], model.head.fc.weight[2:])  # the given model is kept


# ------------------------------------------------------------------------------ resuming


@contextlib.contextmanager
def stop_after(checks: int):
    """Ask the trainer to stop (as Ctrl-C does) at its ``checks``-th batch boundary."""
    import paraformer.train.loop as loop

    class Flag:
        def __init__(self) -> None:
            self.seen = 0

        @property
        def requested(self) -> bool:
            self.seen += 1
            return self.seen > checks

    @contextlib.contextmanager
    def interrupt():
        yield Flag()

    original = loop.graceful_interrupt
    loop.graceful_interrupt = interrupt
    try:
        yield
    finally:
        loop.graceful_interrupt = original


def test_an_interrupted_task_resumes_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg, tcfg = two_tasks("expand", buffer=40, routing="maxlogit"), train_cfg(epochs=2)
    whole = run_continual(cfg, tcfg, tmp_path / "whole", log=lambda s: None)
    out = tmp_path / "cut"
    first = run_continual(cfg, tcfg, out, log=lambda s: None, splits=("test", "val"))
    assert not first.get("interrupted")
    # rerun task 2 only: forget that it finished, then stop it half-way (state saved) and resume
    progress = json.loads((out / "seed-0" / "progress.json").read_text())
    progress["tasks_done"] = 1
    for key in ("test", "val"):
        progress[key] = {k: v[:1] for k, v in progress[key].items()}
    progress["tasks"] = progress["tasks"][:1]
    (out / "seed-0" / "progress.json").write_text(json.dumps(progress))
    import shutil

    shutil.rmtree(out / "seed-0" / "task-1")
    with stop_after(6):
        cut = resume_continual(out, log=lambda s: None)
    assert cut == {"interrupted": True, "seed": 0}
    assert (out / "seed-0" / "task-1" / "train_state.pt").is_file()
    again = resume_continual(out, log=lambda s: None)
    assert again["seeds"]["0"]["test"] == whole["seeds"]["0"]["test"]
    a = load_model(out / "seed-0" / "after-task-1").state_dict()
    b = load_model(tmp_path / "whole" / "seed-0" / "after-task-1").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ the command

SMALL = [f"--set={k}={v}" for k, v in TINY.items()]
CMD = ["continual", "--dataset", "embedded", "--limit-train", "200", "--limit-test", "100", "--epochs", "1"]
CMD += ["--batch-size", "50", "--no-progress", *SMALL]


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), (words, last)


def test_paraformer_continual_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cl"
    code = main([*CMD, "--method", "expand", "--tasks", "2", "--classes-per-task", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    for words in ("seed 0 task 2/2", "class-IL accuracy", "task-IL accuracy", "average forgetting", "bytes"):
        assert words in text, words
    assert "after T2" in text and "gates of the added branches" in text
    assert {"continual.json", "results.json", "heatmap.png"} <= {p.name for p in out.iterdir()}
    code = main(["continual", "--resume", "--out", str(out), "--seeds", "0,1", "--json", "--no-progress"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and sorted(data["seeds"]) == ["0", "1"] and data["method"] == "expand"


def test_continual_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, main([*CMD, "--tasks", "3", "--out", str(tmp_path / "a")]), "--tasks 3", "divide")
    code = main([*CMD, "--method", "er", "--buffer", "100000", "--out", str(tmp_path / "b")])
    one_line_error(capsys, code, "--buffer 100000", "larger than")
    code = main([*CMD, "--method", "er", "--add-branches", "2", "--out", str(tmp_path / "c")])
    one_line_error(capsys, code, "--add-branches", "--method er")
    one_line_error(capsys, main([*CMD, "--routing", "aux", "--out", str(tmp_path / "d")]), "--buffer")
    out = tmp_path / "e"
    assert (
        main([*CMD, "--method", "finetune", "--tasks", "2", "--classes-per-task", "2", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    code = main(["continual", "--resume", "--out", str(out), "--class-order", "1,0,2,3"])
    one_line_error(capsys, code, "order 0,1,2,3", "--class-order 1,0,2,3")
    code = main(["continual", "--resume", "--out", str(out), "--method", "er"])
    one_line_error(capsys, code, "--method finetune")
    one_line_error(
        capsys,
        main([*CMD, "--method", "finetune", "--tasks", "2", "--classes-per-task", "2", "--out", str(out)]),
        "--resume",
    )
    one_line_error(
        capsys, main(["continual", "--resume", "--out", str(tmp_path / "none")]), "no continual run"
    )
