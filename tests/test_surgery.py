"""Shrink and grow: compress, greedy selection, expand, expansion training, sweep, ONNX export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from paraformer import ParaFormerConfig, ViTConfig, compress, expand, export_onnx, greedy_order, sweep
from paraformer.checkpoint import load_model, save_weights
from paraformer.cli import main
from paraformer.continual import train_expansion
from paraformer.data import ImageDataset, select_classes
from paraformer.errors import ConfigError
from paraformer.models import ParaFormer, ViT
from paraformer.tasks.image import TrainConfig
from paraformer.tasks.image_eval import evaluate
from test_cli import one_line_error

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, heads=2, mlp_dim=32)
SMALL = [
    *("--set", "dim=32", "--set", "heads=2", "--set", "mlp_dim=64"),
    *("--set", "num_branches=3", "--set", "branch_depth=1"),
]


def tiny(n: int = 3, **kw) -> ParaFormer:
    torch.manual_seed(0)
    return ParaFormer(ParaFormerConfig(**{**TINY, "num_branches": n, "branch_depth": 1, **kw})).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def images(n: int = 24, classes: tuple[int, ...] = (0, 1, 2, 3), seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([classes[i % len(classes)] for i in range(n)])
    pixels = torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    pixels[:, :, :4] = (
        (labels * 60).to(torch.uint8).view(-1, 1, 1, 1)
    )  # learnable: the class is in the top half
    return ImageDataset(pixels, labels, [f"c{i}" for i in range(6)])


# ---------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("branches", [1, 2, [2], [2, 0], [1, 2, 0]])
def test_compressed_logits_equal_the_selected_branches_of_the_original(branches) -> None:
    model, x = tiny(3), torch.randn(5, 1, 8, 8)
    before = snapshot(model)
    small = compress(model, branches)
    assert unchanged(model, before) and model.num_branches == 3
    assert small.num_branches == (branches if isinstance(branches, int) else len(branches))
    torch.testing.assert_close(small(x), model(x, branches=branches))


def test_expanded_logits_equal_the_original_before_training() -> None:
    model, x = tiny(2), torch.randn(5, 1, 8, 8)
    before = snapshot(model)
    grown = expand(model, 2, seed=3)
    assert grown.num_branches == 4 and unchanged(model, before)
    torch.testing.assert_close(grown(x), model(x))
    wider = expand(model, 1, num_classes=6, seed=3)
    assert wider.cfg.num_classes == 6 and model.cfg.num_classes == 4
    torch.testing.assert_close(wider(x)[:, :4], model(x))  # new class rows leave the old logits alone
    head_only = expand(model, 0, num_classes=5)
    assert head_only.num_branches == 2
    torch.testing.assert_close(head_only(x)[:, :4], model(x))
    with pytest.raises(ConfigError, match="num_classes"):
        expand(model, 1, num_classes=3)
    with pytest.raises(ConfigError, match=">= 1"):
        expand(model, 0)


def test_expansion_training_leaves_the_frozen_branches_bit_identical() -> None:
    model = expand(tiny(2), 2, num_classes=6, seed=1)
    before = snapshot(model)
    train = images(48, classes=(4, 5))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu", warmup_epochs=0)
    trained, summary = train_expansion(model, 2, train, val=images(12, (4, 5), seed=1), cfg=cfg)
    assert unchanged(model, before), "the given model is not changed"
    after = trained.state_dict()
    frozen = [k for k in before if k.startswith(("embed.", "branches.0.", "branches.1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["branches.2.gate"], before["branches.2.gate"]), "new branches train"
    assert not torch.equal(after["head.fc.weight"], before["head.fc.weight"]), "the head trains"
    assert summary["epochs_completed"] == 2 and "val_acc" in summary
    unfrozen, _ = train_expansion(model, 2, train, cfg=cfg, unfreeze=True)
    assert not torch.equal(
        unfrozen.state_dict()["branches.0.0.mlp.net.0.weight"], before["branches.0.0.mlp.net.0.weight"]
    )
    with pytest.raises(ConfigError, match="old_branches"):
        train_expansion(model, 4, train, cfg=cfg)
    whole, _ = train_expansion(tiny(2), 0, images(48), cfg=cfg.replace(epochs=1))  # a first task
    assert not torch.equal(whole.state_dict()["embed.cls_token"], tiny(2).state_dict()["embed.cls_token"])


def test_a_loss_on_the_new_classes_leaves_the_old_class_rows_alone() -> None:
    model = expand(tiny(2), 1, num_classes=6, seed=1)
    before = snapshot(model)
    cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", warmup_epochs=0, weight_decay=0.0)
    trained, _ = train_expansion(model, 2, images(32, classes=(4, 5)), cfg=cfg, loss_classes=[4, 5])
    weight, old_weight = trained.state_dict()["head.fc.weight"], before["head.fc.weight"]
    assert torch.equal(weight[:4], old_weight[:4]) and not torch.equal(weight[4:], old_weight[4:])
    with pytest.raises(ConfigError, match="outside loss_classes"):
        train_expansion(model, 2, images(32, classes=(3, 4)), cfg=cfg, loss_classes=[4, 5])


def test_greedy_order_picks_the_branch_that_lowers_the_loss_most() -> None:
    model = tiny(3)
    with torch.no_grad():
        for p in model.branches[0].parameters():
            p.mul_(0)  # branch 0 contributes only its biases: a poor first choice
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    order = greedy_order(model, (x, y))
    assert sorted(order) == [0, 1, 2] and len(greedy_order(model, (x, y), branches=2)) == 2
    losses = {i: torch.nn.functional.cross_entropy(model(x, branches=[i]), y).item() for i in range(3)}
    assert order[0] == min(losses, key=losses.get)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]  # an iterable of batches works the same
    assert greedy_order(model, batches) == order


def test_sweep_rows_and_purity() -> None:
    model = tiny(3)
    before = snapshot(model)
    data = images(20)
    from paraformer.data import BatchTransform

    transform = BatchTransform((0.5,), (0.25,))
    rows = sweep(model, {"val": (data, transform)}, repeats=2)
    assert [r["branches"] for r in rows] == [1, 2, 3] and unchanged(model, before)
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    assert rows[0]["flops_per_image"] < rows[2]["flops_per_image"] and rows[0]["latency_ms"] > 0
    full = evaluate(model, data, transform)
    assert rows[-1]["val_acc"] == pytest.approx(full.accuracy)


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    for model in (compress(tiny(3), [2, 0]), ViT(ViTConfig(**TINY, depth=2)).eval()):
        report = export_onnx(model, tmp_path / "m.onnx", torch.randn(6, 1, 8, 8), repeats=2)
        assert report["max_abs_diff"] < 1e-4 and report["onnxruntime_latency_ms"] > 0


def test_select_classes() -> None:
    data = images(20)
    two = select_classes(data, [3, 1])
    assert len(two) == 10 and set(two.labels.tolist()) == {1, 3}
    for bad, words in (([], "at least one"), ([1, 1], "distinct"), ([9], "not in the dataset")):
        with pytest.raises(ConfigError, match=words):
            select_classes(data, bad)


# ---------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("surgery") / "run"
    argv = ["train", "--epochs", "1", "--limit-train", "300", "--batch-size", "50", "--classes", "0,1,2"]
    assert main([*argv, "--no-progress", "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def vit_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a ViT (the ParaFormer run's settings, a ViT's weights)."""
    out = tmp_path_factory.mktemp("surgery") / "vit"
    saved = json.loads((run_dir / "config.json").read_text())
    vit = ViT(ViTConfig(**{**TINY, "image_size": 28, "in_channels": 1, "num_classes": 3}, depth=1))
    save_weights(out, vit.state_dict(), vit.cfg, {k: v for k, v in saved.items() if k != "model"})
    return out


def test_sweep_writes_table_json_png_and_its_last_row_is_plain_eval(run_dir: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--sweep-branches"]) == 0
    out = capsys.readouterr().out
    assert "val acc %" in out and (run_dir / "branches.png").stat().st_size > 1000
    rows = json.loads((run_dir / "branches.json").read_text())["rows"]
    assert len(rows) == 3 and {"val_acc", "test_acc", "params", "flops_per_image", "latency_ms"} <= set(
        rows[0]
    )
    assert main(["eval", str(run_dir), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert rows[-1]["test_acc"] == plain["accuracy"] and rows[-1]["params"] == plain["num_params"]
    assert plain["num_samples"] == 300  # the test split holds the classes the run has seen: 0, 1, 2


def test_compress_writes_a_run_that_loads_like_any_other(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(["compress", str(run_dir), "--indices", "2,0", "--out", str(out), "--no-progress"]) == 0
    assert "smaller than its ViT twin" in capsys.readouterr().out
    x = torch.randn(4, 1, 28, 28)
    full, small = load_model(run_dir / "best").eval(), load_model(out).eval()
    torch.testing.assert_close(small(x), full(x, branches=[2, 0]))
    record = json.loads((out / "summary.json").read_text())["compression"]
    assert record["branches"] == [2, 0] and record["ratio_vs_full"] > 1 and record["ratio_vs_vit_twin"] > 1
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"] == 2
    assert main(["info", str(out)]) == 0 and "branches 2 x depth 1" in capsys.readouterr().out


def test_greedy_compression_reads_only_the_validation_split(
    run_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import paraformer.commands.compress as surgery_runs
    from paraformer.tasks import open_run
    from paraformer.tasks.image import reopen

    seen: list[torch.Tensor] = []
    real = surgery_runs.greedy_order

    def spy(model, data, **kw):
        seen.append(data[0].images)
        return real(model, data, **kw)

    monkeypatch.setattr(surgery_runs, "greedy_order", spy)
    out = tmp_path / "g"
    argv = ["compress", str(run_dir), "--branches", "2", "--select", "greedy", "--finetune-epochs", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    splits = reopen(open_run(run_dir / "best"), None, ("val", "test"))
    assert len(seen) == 1 and torch.equal(seen[0], splits["val"].images)
    test_rows = {bytes(img.numpy()) for img in splits["test"].images}
    assert not any(bytes(img.numpy()) in test_rows for img in seen[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["compression"]["select"] == "greedy"


def test_export_checks_onnx_against_pytorch(run_dir: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "onnx", "--images", "8"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference" in out and "onnxruntime" in out and (run_dir / "model.onnx").is_file()
    diff = float(out.split("PyTorch ")[1].split()[0])
    assert diff < 1e-4


def test_expand_learns_new_classes_on_a_frozen_base(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "e"
    argv = ["expand", str(run_dir), "--add-branches", "1", "--classes", "3,4", "--epochs", "1"]
    assert main([*argv, "--limit-train", "200", "--out", str(out), "--no-progress"]) == 0
    assert "old classes" in capsys.readouterr().out
    old, new = load_model(run_dir / "best"), load_model(out)
    assert new.num_branches == 4 and new.cfg.num_classes == 5
    for key, value in old.state_dict().items():
        if key.startswith(("embed.", "branches.")):
            assert torch.equal(new.state_dict()[key], value), key
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["classes"] == [3, 4] and saved["seen_classes"] == [0, 1, 2, 3, 4]
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 500  # classes 0..4 of the test split


@pytest.mark.parametrize(
    "argv, words",
    [
        (["compress", "{run}", "--branches", "0"], ("--branches", "0 is out of range")),
        (["compress", "{run}", "--branches", "4"], ("branches=4", "3 branch")),
        (["compress", "{run}", "--indices", "1,1"], ("distinct",)),
        (["compress", "{run}", "--indices", "0,3"], ("[0, 2]",)),
        (["compress", "{vit}", "--branches", "1"], ("compression", "vit")),
        (["expand", "{vit}", "--add-branches", "1"], ("expansion", "vit")),
        (["expand", "{run}", "--add-branches", "1", "--classes", ""], ("classes",)),
        (["expand", "{run}", "--add-branches", "1", "--classes", "2,3"], ("[2]", "already learned")),
        (["expand", "{run}", "--add-branches", "1", "--classes", "12"], ("[12]", "not in the dataset")),
        (["expand", "{run}", "--add-branches", "0"], ("--add-branches",)),
        (["export", "{run}", "--format", "tflite"], ("tflite", "onnx")),
        (["compress", "{run}", "--branches", "1", "--out", "{run}"], ("already holds a run",)),
        (["expand", "{run}", "--add-branches", "1", "--out", "{run}"], ("already holds a run",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], words: tuple[str, ...], run_dir: Path, vit_run: Path, tmp_path: Path, capsys
) -> None:
    argv = [a.format(run=run_dir, vit=vit_run) for a in argv]
    if argv[0] in ("compress", "expand") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] == "expand":
        argv += ["--limit-train", "100", "--epochs", "1", "--no-progress"]
    one_line_error(capsys, main(argv), *words)


def test_a_compressed_copy_of_a_run_is_independent(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = (copy / "best" / "model.safetensors").read_bytes()
    assert (
        main(["compress", str(copy), "--branches", "1", "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    )
    assert (copy / "best" / "model.safetensors").read_bytes() == before


def test_evaluate_selections_match_the_restricted_models() -> None:
    from paraformer import evaluate_selections

    model = tiny(3)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    selections = [1, 3, [2], [2, 0]]
    scores = evaluate_selections(model, (x, y), selections)
    for selection, score in zip(selections, scores, strict=True):
        logits = model(x, branches=selection)
        assert score["acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
        assert score["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
