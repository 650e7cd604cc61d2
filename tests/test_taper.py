"""Cost-cutting tapers, residual-width models, shared repetition, sub-layer gradients, equalisation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from paraformer import list_models
from paraformer.analysis.gfa import skip_importance, theoretical_fan_in
from paraformer.cli import main
from paraformer.config import LMConfig, taper_schedule
from paraformer.errors import ConfigError
from paraformer.models import build_model, get_config
from paraformer.models.lm_presets import COST_SIZES, cost_schedules
from paraformer.surgery.prune import prune_layers, skip_forward
from paraformer.surgery.scores import angular_distances, block_influence, choose_removal, magnitude_scores
from paraformer.train.grad_stats import GradientStats, equalize, layer_parameters

TINY = dict(vocab_size=13, context=16, dim=24, head_dim=8)
RESID = dict(dims=(24, 24, 16, 16, 8), heads=(3, 3, 2, 2, 1), mlp_dims=(48, 48, 32, 32, 16))
COST = [n for n in list_models() if n.startswith(("taper_", "widen_", "lm_narrow_", "lm_uniform_d"))]


def resid(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LMConfig(**{**TINY, "depth": 5, **RESID, **kw})
    return build_model(cfg).eval()


def tokens(b: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 13, (b, t), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------- schedules and presets


def test_the_schedules_have_exactly_the_stated_widths() -> None:
    s = cost_schedules(128)
    assert s["taper_ffn"]["mlp_dims"] == (512, 448, 384, 312, 248, 184, 120, 48)
    assert s["taper_ffn"]["heads"] == (4,) * 8
    assert s["taper_attn_ffn"]["heads"] == (4, 4, 3, 3, 3, 2, 2, 2)
    assert s["taper_attn_ffn"]["mlp_dims"] == (512, 464, 424, 376, 328, 280, 240, 192)
    assert s["taper_resid"]["dims"] == (128, 128, 112, 112, 96, 96, 80, 80)
    assert s["taper_resid"]["heads"] == (4, 4, 3, 3, 3, 3, 2, 2)
    assert s["taper_resid"]["mlp_dims"] == tuple(4 * d for d in s["taper_resid"]["dims"])
    for name in ("ffn", "attn_ffn", "resid"):  # the widening mirror is the same widths reversed
        for field, widths in s[f"taper_{name}"].items():
            assert s[f"widen_{name}"][field] == widths[::-1]
    assert s["lm_narrow"] == {"heads": (3,) * 8, "mlp_dims": (336,) * 8}
    assert taper_schedule(10, 5, 0.2, what="w") == (10, 8, 6, 4, 2)
    assert taper_schedule(100, 4, 0.5, stage=2, multiple=10, what="w") == (90, 90, 60, 60)


# the stated fractions of fewer FLOPs per token than uniform (docs/lm.md), per size
SAVED = {
    64: {"taper_ffn": 0.223, "taper_attn_ffn": 0.310, "taper_resid": 0.348, "lm_narrow": 0.310},
    96: {"taper_ffn": 0.244, "taper_attn_ffn": 0.320, "taper_resid": 0.301, "lm_narrow": 0.320},
    128: {"taper_ffn": 0.256, "taper_attn_ffn": 0.298, "taper_resid": 0.299, "lm_narrow": 0.302},
}


@pytest.mark.parametrize("dim", COST_SIZES)
def test_every_cost_preset_has_the_stated_fewer_flops_than_uniform(dim: int) -> None:
    uniform = "lm_uniform_small" if dim == 128 else f"lm_uniform_d{dim}"
    base = build_model(get_config(uniform, vocab_size=65)).flops_per_token()
    for name, saved in SAVED[dim].items():
        for variant in {name, name.replace("taper_", "widen_")}:
            flops = build_model(get_config(f"{variant}_d{dim}", vocab_size=65)).flops_per_token()
            assert 1 - flops / base == pytest.approx(saved, abs=5e-4), variant
    # the narrow control is FLOP-matched to the heads-and-FFN taper within 1% of uniform
    assert abs(SAVED[dim]["lm_narrow"] - SAVED[dim]["taper_attn_ffn"]) < 0.01


@pytest.mark.parametrize("name", COST)
def test_every_cost_preset_forwards_and_backwards(name: str) -> None:
    model = build_model(get_config(name, vocab_size=13, context=8))
    logits = model(torch.randint(0, 13, (2, 8)))
    assert logits.shape == (2, 8, 13)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_info_list_models_and_bench_work_on_the_new_presets(capsys) -> None:
    assert main(["list-models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in COST)
    assert main(["info", "taper_resid_d128"]) == 0
    assert "FLOPs per token" in capsys.readouterr().out
    args = ["--set", "context=16", "--rounds", "1", "--prompt-len", "4", "--new-tokens", "3"]
    args += ["--decode-batch", "2", "--train-batch", "2", "--device", "cpu", "--json"]
    assert main(["lm", "bench", "taper_resid_d64", "widen_resid_d64", "lm_narrow_d64", *args]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["models"]["taper_resid_d64"]["decode_ms_per_token"] > 0


# ---------------------------------------------------------------------------- residual-width taper


def test_a_residual_taper_projects_where_the_width_changes_and_back_for_the_tied_head() -> None:
    model = resid()
    assert {k: (t.in_features, t.out_features) for k, t in model.transitions.items()} == {
        "2": (24, 16),
        "4": (16, 8),
        "out": (8, 24),
    }
    assert [b.norm1.normalized_shape[0] for b in model.blocks] == [24, 24, 16, 16, 8]
    widen = resid(dims=(8, 16, 16, 24, 24))
    assert set(widen.transitions) == {"0", "1", "3"}  # from the embedding into the first layer
    assert model(tokens()).shape == (2, 12, 13)


def test_kv_cache_equals_recompute_on_a_residual_taper_and_a_repeated_stack() -> None:
    for model in (resid(), resid(dims=(8, 16, 16, 24, 24)), resid(dims=(), heads=(2,) * 5, repeat=2)):
        x = tokens()
        cached, a = model.generate(x, 4, temperature=0, return_logits=True)
        plain, b = model.generate(x, 4, temperature=0, use_cache=False, return_logits=True)
        assert torch.equal(cached, plain)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, model(cached)[:, 11:-1], rtol=1e-5, atol=1e-5)
    assert len(resid(dims=(), heads=(2,) * 5, repeat=2).new_cache(1).keys) == 10


def test_pruning_a_residual_taper_multiplies_the_projections_and_equals_skipping() -> None:
    model = resid()
    x = tokens()
    for layers in ([1], [2], [2, 3], [0, 4], [3, 4]):
        pruned = prune_layers(model, layers=layers)
        torch.testing.assert_close(pruned(x), skip_forward(model, x, layers), rtol=1e-5, atol=1e-5)
    assert prune_layers(model, layers=[2, 3]).cfg.dims == (24, 24, 8)
    sub = prune_layers(model, attn=[2], mlp=[4])
    assert sub.cfg.dims == model.cfg.dims and sub(x).shape == (2, 12, 13)
    bump = resid(dims=(24, 16, 24, 24, 24))  # dropping layer 1 would join 24 and 24 through 16
    with pytest.raises(ConfigError, match="join two layers of residual width 24"):
        prune_layers(bump, layers=[1])


def test_the_scorers_and_deep_supervision_work_on_a_residual_taper() -> None:
    model = resid()
    x = tokens()
    assert len(block_influence(model, x)) == 5 and len(magnitude_scores(model)) == 5
    spans = angular_distances(model, x, 2)
    assert [math.isinf(d) for d in spans] == [False, True, False, True]  # only spans of one width
    removal = choose_removal("angular", model, 2, batches=x)
    assert removal.layers in ([0, 1], [2, 3])
    with pytest.raises(ConfigError, match="consecutive layers of one residual width"):
        choose_removal("angular", model, 3, batches=x)
    logits = model.layer_logits(x)  # the head after each layer, the later layers skipped
    assert logits.shape == (5, 2, 12, 13)
    torch.testing.assert_close(logits[1], skip_forward(model, x, [2, 3, 4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[-1], model(x), rtol=1e-5, atol=1e-5)


def test_a_layer_narrower_than_one_head_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="narrower than one head"):
        LMConfig(**TINY, depth=2, heads=(1, 1), mlp_dims=(8, 8), dims=(24, 4))
    with pytest.raises(ConfigError, match="narrower than one head"):
        taper_schedule(64, 8, 0.25, minimum=32, what="residual width")
    with pytest.raises(ConfigError, match="narrower than one head"):
        taper_schedule(4, 8, 0.1, what="head count")
    with pytest.raises(ConfigError, match="dims lists 2"):
        LMConfig(**TINY, depth=3, heads=(1,) * 3, mlp_dims=(8,) * 3, dims=(24, 16))
    with pytest.raises(ConfigError, match="one residual width"):
        LMConfig(**TINY, depth=2, heads=(1, 1), mlp_dims=(8, 8), dims=(24, 16), repeat=2)
    assert main(["lm", "bench", "lm_uniform_small", "--set", "dims=[128, 8, 8, 8, 8, 8, 8, 8]"]) == 2


# ---------------------------------------------------------------------------- shared repetition


def test_shared_repetition_runs_the_same_blocks_again() -> None:
    once = resid(dims=(), heads=(2,) * 5)
    twice = build_model(once.cfg.replace(repeat=2)).eval()
    twice.load_state_dict(once.state_dict())  # the same parameters, nothing added
    assert twice.num_params() == once.num_params()
    x = tokens()
    h = once.embed(x)
    for _ in range(2):
        for block in once.blocks:
            h = block(h)
    torch.testing.assert_close(twice(x), once.readout(h))
    assert twice.flops_per_token() > 1.9 * once.flops_per_token() - once.tok_emb.weight.numel() * 2
    assert theoretical_fan_in(twice.cfg) == [10 + 5, 9 + 4, 8 + 3, 7 + 2, 6 + 1]
    base, increases = skip_importance(twice, lambda m: float(m(x).square().mean()))
    assert len(increases) == 5  # skipping a block skips every application of it
    with pytest.raises(ConfigError, match="deep supervision"):
        twice.layer_logits(x)


# ---------------------------------------------------------------------------- sub-layer gradients


class _Trainer:
    def __init__(self, model) -> None:
        self.model = model


def backward(model: torch.nn.Module, seed: int) -> None:
    x = torch.randint(0, 13, (2, 10), generator=torch.Generator().manual_seed(seed))
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x).reshape(-1, 13), x.reshape(-1)).backward()


def test_sub_layer_sums_add_up_to_the_layer_figures_and_resume_exactly() -> None:
    model = prune_layers(resid().train(), attn=[1])  # one layer without attention
    stats = GradientStats()
    stats.on_start(_Trainer(model))
    for seed in (1, 2):
        backward(model, seed)
        stats.after_backward(_Trainer(model))
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in stats.state_dict().items()}
    backward(model, 3)
    stats.after_backward(_Trainer(model))
    resumed = GradientStats()
    resumed.on_start(_Trainer(model))
    resumed.load_state_dict(saved)
    resumed.after_backward(_Trainer(model))  # the same third step
    for key, value in stats.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed.state_dict()[key])), key
    record: dict = {}
    stats.on_epoch_end(_Trainer(model), record)
    sub = torch.tensor(record["grad_norm_sum_sub"])
    assert sub.shape == (5, 2) and sub[1, 0] == 0 and record["sub_params"][1][0] == 0
    block = model.blocks[0]
    assert record["sub_params"][0] == [
        sum(p.numel() for m in (block.norm1, block.attn) for p in m.parameters()),
        sum(p.numel() for m in (block.norm2, block.mlp) for p in m.parameters()),
    ]
    # a layer's squared norm at one step is the sum of its sub-layers' (checked on the last step)
    one = GradientStats()
    one.on_start(_Trainer(model))
    one.after_backward(_Trainer(model))
    torch.testing.assert_close(one.norm_sum, one.sub_norm_sum.square().sum(1).sqrt())
    old = {k: v for k, v in saved.items() if not k.startswith("sub_")}  # a state from before sub-layers
    legacy = GradientStats()
    legacy.on_start(_Trainer(model))
    legacy.load_state_dict(old)
    legacy.on_epoch_end(_Trainer(model), record := {})
    assert "grad_norm_sum" in record and "grad_norm_sum_sub" not in record


def test_sub_layer_cascadeflow_removes_the_lowest_sub_layers_without_data() -> None:
    model = resid()
    sizes = [[100, 400]] * 5
    norms = [[50.0, 100.0], [10.0, 300.0], [40.0, 20.0], [60.0, 200.0], [70.0, 160.0]]
    record = {"grad_norm_sum_sub": norms, "grad_taylor_sum_sub": norms, "sub_params": sizes}
    # per parameter: attention n/10, FFN n/20 -> A1 5, F1 5, A2 1, F2 15, A3 4, F3 1, A4 6, F4 10, ...
    removal = choose_removal("cascadeflow-sub", model, 2, grad_record=record)
    assert (removal.attn, removal.mlp, removal.layers) == ([1, 2], [0, 2], [])
    taylor = choose_removal("cascadeflow-sub-taylor", model, 1, grad_record=record)
    assert (taylor.attn, taylor.mlp) == ([1], [2])
    assert choose_removal("last", model, 2).layers == [3, 4]
    pruned = removal.apply(model)
    assert pruned.cfg.depth == 4  # layer 2 lost both sub-layers
    with pytest.raises(ConfigError, match="no per-sub-layer gradient sums"):
        choose_removal("cascadeflow-sub", model, 1, grad_record={"grad_norm_sum": [1.0] * 5})


# ---------------------------------------------------------------------------- equalisation


def test_gradient_equalisation_makes_every_layer_norm_the_mean() -> None:
    model = resid().train()
    backward(model, 1)
    groups = layer_parameters(model)
    for p in groups[0]:
        p.grad.mul_(10.0)  # make the first layer's gradient stand out
    before = equalize(groups)
    assert before[0] > 5 * before[1:].max()
    after = torch.tensor([math.sqrt(sum(float(p.grad.square().sum()) for p in g)) for g in groups])
    torch.testing.assert_close(after.double(), torch.full((5,), float(before.mean()), dtype=torch.float64))
    assert model.tok_emb.weight.grad is not None  # the rest is left alone


# ---------------------------------------------------------------------------- a run that resumes


TEXT = "".join(f"{w} the quick brown fox jumps over the lazy dog {i % 7}.\n" for i, w in enumerate("ab" * 99))


def test_an_equalised_residual_taper_run_records_it_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    from paraformer.launch import resume, train
    from paraformer.tasks.text import LMTrainConfig

    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text(TEXT)
    model = dict(dim=24, head_dim=8, context=16, depth=5, **{k: list(v) for k, v in RESID.items()})
    cfg = LMTrainConfig(
        data=str(tmp_path / "t.txt"), model="lm_uniform_small", model_overrides=model, batch_size=4,
        eval_interval=4, max_steps=12, seed=2, equalize_grads=True,
    )  # fmt: skip
    quiet = lambda _m: None  # noqa: E731
    straight = train(cfg, tmp_path / "a", log=quiet, progress=False)
    train(cfg, tmp_path / "b", log=quiet, progress=False, stop_after_epochs=1)
    resumed = resume(tmp_path / "b", log=quiet, progress=False)
    assert json.loads((tmp_path / "b/config.json").read_text())["train"]["equalize_grads"] is True
    assert resumed["val_loss"] == straight["val_loss"]
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b"))
    assert "transitions.out.weight" in wa and all(torch.equal(wa[k], wb[k]) for k in wa)
    a, b = (json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1]) for d in "ab")
    for key in ("grad_norm_sum", "grad_norm_sum_sub", "grad_taylor_sum_sub", "sub_params", "grad_steps"):
        assert a[key] == b[key], key
    unequal = train(cfg.replace(equalize_grads=False), tmp_path / "c", log=quiet, progress=False)
    assert unequal["val_loss"] != straight["val_loss"]  # the option changed training
