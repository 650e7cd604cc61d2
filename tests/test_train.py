"""Training: a real short run learns, strategies do what they say, resume is exact."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paraformer.errors import ConfigError, TrainingError
from paraformer.launch import resume, train
from paraformer.models import ParaFormer
from paraformer.tasks.image import TrainConfig
from paraformer.train.objectives import (
    FusedObjective,
    JointObjective,
    Objective,
    ProgressiveObjective,
    make_objective,
)
from paraformer.train.schedule import warmup_cosine

CE = torch.nn.functional.cross_entropy

# A small ParaFormer on the embedded Fashion-MNIST subset: seconds per epoch on 2 cores.
SMALL = {"dim": 32, "heads": 2, "mlp_dim": 64, "num_branches": 3, "branch_depth": 1}


def small_config(**kw) -> TrainConfig:
    base = dict(
        model="paraformer_tiny_fmnist",
        model_overrides=SMALL,
        dataset="embedded",
        epochs=2,
        batch_size=64,
        lr=2e-3,
        limit_train=400,
        warmup_epochs=0.5,
    )
    return TrainConfig(**{**base, **kw})


def fast_learning_config(**kw) -> TrainConfig:
    """Patch 7 (16 tokens) learns in a few seconds; seeds 0-2 reached 67-72% test accuracy."""
    base = dict(
        epochs=10, limit_train=1000, batch_size=32, lr=3e-3, model_overrides={**SMALL, "patch_size": 7}
    )
    return small_config(**{**base, **kw})


def quiet(_: str) -> None:
    pass


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_short_real_run_learns_and_writes_a_complete_run_folder(tmp_path: Path) -> None:
    cfg = fast_learning_config(mode="fused")
    summary = train(cfg, tmp_path / "run", log=quiet, progress=False)
    run = tmp_path / "run"
    for name in (
        "config.json",
        "model.safetensors",
        "train_state.pt",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "best/model.safetensors",
        "best/config.json",
    ):
        assert (run / name).is_file(), name
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert summary["test_acc"] > 0.55, summary  # chance is 10%
    assert len(history[-1]["val_acc_prefix"]) == 3 and len(summary["test_acc_prefix"]) == 3
    assert history[-1]["samples_per_s"] > 0 and history[-1]["val_acc"] is not None
    assert not any(k.startswith("test_") for h in history for k in h), "no per-epoch test unless asked"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["num_branches"] == 3 and config["train"]["mode"] == "fused"


def test_vit_twin_trains_with_the_standard_loop(tmp_path: Path) -> None:
    overrides = {k: v for k, v in SMALL.items() if k not in ("num_branches", "branch_depth")} | {"depth": 3}
    cfg = small_config(model="vit_tiny_fmnist", model_overrides=overrides, epochs=1, mode="progressive")
    summary = train(cfg, tmp_path / "vit", log=quiet, progress=False)
    assert summary["mode"] == "standard" and "test_acc_prefix" not in summary


def _counting_stepper() -> tuple[list[float], object]:
    losses: list[float] = []

    def step(loss: torch.Tensor) -> None:
        losses.append(loss.item())
        loss.backward()

    return losses, step


def _tiny_model() -> ParaFormer:
    from paraformer.models import create_model

    torch.manual_seed(0)
    return create_model("paraformer_tiny_fmnist", **SMALL, image_size=8)


def test_progressive_takes_one_step_per_prefix_then_one_full_step() -> None:
    model = _tiny_model()
    strategy = make_objective(model, "progressive", "uniform", CE)
    assert isinstance(strategy, ProgressiveObjective) and strategy.passes == ("prefixes", "full")
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    losses, step = _counting_stepper()
    model.eval()
    strategy.train_batch(model, x, y, "prefixes", step)
    assert len(losses) == 3
    expected = [torch.nn.functional.cross_entropy(model(x, branches=k), y).item() for k in (1, 2, 3)]
    assert losses == pytest.approx(expected, rel=1e-5)
    strategy.train_batch(model, x, y, "full", step)
    assert len(losses) == 4
    assert strategy.steps_per_batch("prefixes") == 3 and strategy.steps_per_batch("full") == 1


@pytest.mark.parametrize("weighting", ["uniform", "linear"])
def test_fused_loss_is_the_weighted_mean_of_prefix_losses(weighting: str) -> None:
    model = _tiny_model().eval()
    strategy = make_objective(model, "fused", weighting, CE)
    assert isinstance(strategy, FusedObjective)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    losses, step = _counting_stepper()
    strategy.train_batch(model, x, y, "train", step)
    per_prefix = torch.tensor(
        [torch.nn.functional.cross_entropy(model(x, branches=k), y).item() for k in (1, 2, 3)]
    )
    w = torch.ones(3) if weighting == "uniform" else torch.tensor([1.0, 2.0, 3.0])
    assert losses == [pytest.approx((per_prefix * w / w.sum()).sum().item(), rel=1e-5)]


def test_joint_mode_and_vits_use_the_standard_strategy() -> None:
    from paraformer.models import create_model

    assert type(make_objective(_tiny_model(), "joint", "uniform", CE)) is JointObjective
    vit = create_model("vit_tiny_fmnist", dim=16, heads=2, mlp_dim=16, depth=1)
    assert type(make_objective(vit, "progressive", "uniform", CE)) is Objective


def test_warmup_cosine_schedule() -> None:
    lrs = [warmup_cosine(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


@pytest.mark.parametrize("mode", ["fused", "progressive"])
def test_resume_after_an_epoch_gives_the_same_weights(tmp_path: Path, mode: str) -> None:
    cfg = small_config(mode=mode, limit_train=200)
    train(cfg, tmp_path / "full", log=quiet, progress=False)
    partial = train(cfg, tmp_path / "split", log=quiet, progress=False, stop_after_epochs=1)
    assert partial["epochs_completed"] == 1 and not partial["complete"]
    resume(tmp_path / "split", log=quiet, progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    split = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["val_acc"] for x in full] == [json.loads(x)["val_acc"] for x in split]


def test_ctrl_c_mid_epoch_saves_and_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(mode="progressive", limit_train=300, epochs=2)
    train(cfg, tmp_path / "full", log=quiet, progress=False)

    calls = {"n": 0}
    original = ProgressiveObjective.train_batch

    def interrupting(self, *args, **kwargs):  # a Ctrl-C arrives during the 3rd batch
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ProgressiveObjective, "train_batch", interrupting)
    messages: list[str] = []
    result = train(cfg, tmp_path / "cut", log=messages.append, progress=False)
    assert result["interrupted"] and "--resume" in messages[-1]
    assert not (tmp_path / "cut" / "metrics.jsonl").exists()  # stopped inside epoch 1
    monkeypatch.setattr(ProgressiveObjective, "train_batch", original)
    resume(tmp_path / "cut", log=quiet, progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    train(small_config(epochs=1, limit_train=100), tmp_path / "r", log=quiet, progress=False)
    summary = resume(tmp_path / "r", epochs=2, log=quiet, progress=False)
    assert summary["epochs_completed"] == 2


def test_existing_run_folder_is_not_overwritten(tmp_path: Path) -> None:
    train(small_config(epochs=1, limit_train=100), tmp_path / "r", log=quiet, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(small_config(epochs=1, limit_train=100), tmp_path / "r", log=quiet, progress=False)


def test_a_nan_loss_stops_training_with_advice(tmp_path: Path) -> None:
    cfg = small_config(epochs=1, limit_train=200, lr=1e30, grad_clip=0.0, warmup_epochs=0.0)
    with pytest.raises(TrainingError, match="diverged.*learning rate"):
        train(cfg, tmp_path / "nan", log=quiet, progress=False)


def test_training_is_deterministic_per_seed(tmp_path: Path) -> None:
    cfg = small_config(epochs=1, limit_train=128)
    train(cfg, tmp_path / "a", log=quiet, progress=False)
    train(cfg, tmp_path / "b", log=quiet, progress=False)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_trains(tmp_path: Path) -> None:
    summary = train(fast_learning_config(epochs=6, bf16=True), tmp_path / "bf16", log=quiet, progress=False)
    assert summary["test_acc"] > 0.45  # chance is 10%


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path: Path, monkeypatch, native: bool) -> None:
    monkeypatch.setattr("paraformer.train.devices.cpu_has_native_bf16", lambda: native)
    lines: list[str] = []
    train(
        small_config(epochs=1, limit_train=64, bf16=True), tmp_path / "run", log=lines.append, progress=False
    )
    warned = any("no native bf16" in line for line in lines)
    assert warned is not native


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(mode="sequential"), "mode"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(limit_train=0), "limit_train"),
        (dict(device="tpu"), "device"),
        (dict(strong_magnitude=31), "strong_magnitude"),
        (dict(strong_ops=-1), "strong_ops"),
        (dict(crop_padding=-1), "crop_padding"),
    ],
)
def test_bad_training_values_fail_with_a_sentence(kw: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        small_config(**kw)


def test_shipped_recipes_are_valid_paper_protocols() -> None:
    from paraformer.train.config import list_recipes, load_recipe

    assert {"paper_cifar10", "paper_cifar100", "paper_fashion_mnist"} <= set(list_recipes())
    for name in list_recipes():
        cfg = TrainConfig.from_dict(load_recipe(name, TrainConfig))
        assert cfg.model == "paraformer_paper" and cfg.mode == "progressive"
        assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("adam", 1e-4, 500, 300)
        assert (cfg.strong_ops, cfg.strong_magnitude) == (2, 14)


def test_recipe_errors_name_the_problem(tmp_path: Path) -> None:
    from paraformer.train.config import load_recipe

    with pytest.raises(ConfigError, match="paper_cifar10"):
        load_recipe("no_such_recipe", TrainConfig)
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 3, "lrr": 0.1}')
    with pytest.raises(ConfigError, match="lrr"):
        load_recipe(bad, TrainConfig)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_recipe(bad, TrainConfig)


# ---------------------------------------------------------------------------- honest model selection


def _scripted_evaluations(monkeypatch: pytest.MonkeyPatch, val: list[float]) -> list[str]:
    """Validation accuracy follows ``val`` epoch by epoch; test accuracy would pick another epoch."""
    from paraformer.tasks.image import ImageClassificationTask
    from paraformer.tasks.image_eval import EvalResult

    calls: list[str] = []

    def fake(self, model, split, **kw):
        calls.append(split)
        epoch = sum(1 for c in calls if c == "val")
        acc = val[epoch - 1] if split == "val" else 0.1 * epoch  # test would prefer the last epoch
        return EvalResult(acc, 1.0 - acc, 10)

    monkeypatch.setattr(ImageClassificationTask, "evaluate", fake)
    return calls


def test_the_best_epoch_is_chosen_on_validation_and_tested_once(tmp_path: Path, monkeypatch) -> None:
    calls = _scripted_evaluations(monkeypatch, [0.5, 0.9, 0.7])
    summary = train(small_config(epochs=3, limit_train=100), tmp_path / "r", log=quiet, progress=False)
    assert calls == ["val", "val", "val", "test"], "test is measured once, at the end"
    assert summary["selected_epoch"] == 2 and summary["selection"] == "best validation acc"
    assert summary["val_acc"] == 0.9 and summary["sources"]["test_*"].startswith("test split")
    assert json.loads((tmp_path / "r" / "best" / "config.json").read_text())["epoch"] == 2


def test_without_validation_the_last_epoch_is_the_result(tmp_path: Path, monkeypatch) -> None:
    calls = _scripted_evaluations(monkeypatch, [])
    cfg = small_config(epochs=2, limit_train=100, val_fraction=0.0)
    summary = train(cfg, tmp_path / "r", log=quiet, progress=False)
    assert calls == ["test"]
    assert summary["selected_epoch"] == 2 and summary["selection"] == "last epoch (no validation split)"
    assert not (tmp_path / "r" / "best").exists() and "val_acc" not in summary


def test_eval_every_adds_test_figures_to_those_epochs(tmp_path: Path, monkeypatch) -> None:
    calls = _scripted_evaluations(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    train(small_config(epochs=4, limit_train=100, eval_every=2), tmp_path / "r", log=quiet, progress=False)
    assert calls == ["val", "val", "test", "val", "val", "test", "test"]
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert ["test_acc" in h for h in history] == [False, True, False, True]


def test_max_steps_sets_the_training_length(tmp_path: Path) -> None:
    cfg = small_config(limit_train=200, batch_size=50, max_steps=7, epochs=1)  # 4 batches per epoch
    summary = train(cfg, tmp_path / "r", log=quiet, progress=False)
    assert summary["steps"] == 7 and summary["epochs"] == 2 and summary["epochs_completed"] == 2
    longer = resume(tmp_path / "r", max_steps=9, log=quiet, progress=False)
    assert longer["steps"] == 9


def test_hooks_run_around_every_step_and_can_silence_writes(tmp_path: Path) -> None:
    from paraformer.train import Hook

    class Recorder(Hook):
        def __init__(self) -> None:
            self.events: list[str] = []

        def after_backward(self, trainer) -> None:
            assert all(p.grad is not None for p in trainer.model.parameters())
            self.events.append("backward")

        def before_step(self, trainer) -> None:
            self.events.append("step")

        def on_epoch_end(self, trainer, record) -> None:
            record["extra"] = len(self.events)

        def writes_files(self, trainer) -> bool:
            return False  # like every rank but one

    hook = Recorder()
    cfg = small_config(epochs=1, limit_train=100, batch_size=50, val_fraction=0.0)
    summary = train(cfg, tmp_path / "r", log=quiet, progress=False, hooks=[hook])
    assert hook.events == ["backward", "step"] * 2 and summary["steps"] == 2
    written = sorted(p.name for p in (tmp_path / "r").iterdir() if p.name != ".lock")  # the owner's lock
    assert written == [], "a silent rank writes nothing"


def test_compile_trains_on_cpu(tmp_path: Path) -> None:
    cfg = small_config(epochs=1, limit_train=64, batch_size=32, compile=True, mode="fused", val_fraction=0.0)
    summary = train(cfg, tmp_path / "r", log=quiet, progress=False)
    assert summary["steps"] == 2 and 0 <= summary["test_acc"] <= 1
