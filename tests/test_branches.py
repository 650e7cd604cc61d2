"""The branch stack: selections, prefix sums, group sums, pure surgery, old checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paraformer import ParaFormerConfig, ViTConfig
from paraformer.checkpoint import load_model, save_model
from paraformer.errors import ConfigError
from paraformer.models import (
    Branched,
    ParaFormer,
    ViT,
    append_branches,
    is_branched,
    select_branches,
)

TINY = dict(image_size=8, patch_size=4, in_channels=3, num_classes=5, dim=12, heads=3, mlp_dim=24)
FIXTURE = Path(__file__).parent / "fixtures" / "v1_paraformer"


def tiny(n: int = 4, **kw) -> ParaFormer:
    torch.manual_seed(0)
    return ParaFormer(ParaFormerConfig(**{**TINY, "num_branches": n, "branch_depth": 2, **kw})).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_protocol_not_the_class_says_what_has_branches() -> None:
    assert is_branched(tiny()) and isinstance(tiny(), Branched)
    assert not is_branched(ViT(ViTConfig(**TINY, depth=2)))


def test_group_sums_add_up_to_the_full_sum() -> None:
    model = tiny(4)
    tokens = model.embed(torch.randn(3, 3, 8, 8))
    stack = model.branches
    full = stack(tokens)
    torch.testing.assert_close(stack.group_sum(tokens, 0, 2) + stack.group_sum(tokens, 2, 4), full)
    torch.testing.assert_close(stack.outputs(tokens).sum(0), full)
    with pytest.raises(ConfigError, match="group"):
        stack.group_sum(tokens, 2, 5)


def test_prefix_sums_from_a_start_branch() -> None:
    model = tiny(4)
    x = torch.randn(3, 3, 8, 8)
    all_prefixes = model.prefix_logits(x)
    torch.testing.assert_close(model.prefix_logits(x, start=2), all_prefixes[2:])


@pytest.mark.parametrize("selection", [[2], [0, 3], [3, 1, 0], 2])
def test_select_returns_a_new_model_with_the_selected_logits(selection) -> None:
    model = tiny(4)
    before = snapshot(model)
    x = torch.randn(3, 3, 8, 8)
    small = select_branches(model, selection)
    assert small is not model and same(before, snapshot(model)), "the given model is unchanged"
    k = selection if isinstance(selection, int) else len(selection)
    assert small.num_branches == k and small.cfg.num_branches == k and model.num_branches == 4
    torch.testing.assert_close(small(x), model(x, branches=selection))
    kept = sum(p.numel() for p in small.parameters())
    per_branch = sum(p.numel() for p in model.branches[0].parameters())
    assert kept == sum(p.numel() for p in model.parameters()) - (4 - k) * per_branch


def test_reordering_changes_prefixes_but_not_the_sum() -> None:
    model = tiny(3)
    x = torch.randn(2, 3, 8, 8)
    reordered = select_branches(model, [2, 0, 1])
    torch.testing.assert_close(reordered(x), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reordered(x, branches=1), model(x, branches=[2]))


def test_append_keeps_the_output_until_the_new_branches_train() -> None:
    model = tiny(2)
    before = snapshot(model)
    x = torch.randn(3, 3, 8, 8)
    bigger = append_branches(model, 2, seed=1)
    assert bigger.num_branches == 4 and bigger.cfg.gated_branches == (2, 3)
    assert same(before, snapshot(model)) and model.num_branches == 2
    torch.testing.assert_close(bigger(x), model(x))
    assert all(bigger.branches[i].gate.item() == 0.0 for i in (2, 3))
    loss = bigger(x).sum()
    loss.backward()
    assert bigger.branches[3].gate.grad is not None and bigger.branches[3].gate.grad.abs() > 0
    # selecting a gated branch keeps its gate
    again = select_branches(bigger, [3, 0])
    assert again.cfg.gated_branches == (0,)
    torch.testing.assert_close(again(x), bigger(x, branches=[3, 0]))


def test_surgery_rejects_models_without_branches_and_bad_selections() -> None:
    vit = ViT(ViTConfig(**TINY, depth=2))
    with pytest.raises(ConfigError, match="ParaFormer"):
        select_branches(vit, 1)
    with pytest.raises(ConfigError, match="distinct"):
        select_branches(tiny(3), [1, 1])
    with pytest.raises(ConfigError, match="out of range"):
        select_branches(tiny(3), 4)
    with pytest.raises(ConfigError, match=">= 1"):
        append_branches(tiny(3), 0)


def test_surgery_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    model = append_branches(select_branches(tiny(4), [3, 1]), 1)
    save_model(tmp_path, model)
    loaded = load_model(tmp_path).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))


def test_checkpoints_written_before_the_branch_stack_still_load() -> None:
    """tests/fixtures/v1_paraformer was written by paraformer 0.1.0 (commit 4d73d27)."""
    model = load_model(FIXTURE).eval()
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(expected["x"]), expected["logits"])
        torch.testing.assert_close(model.prefix_logits(expected["x"]), expected["prefix_logits"])
