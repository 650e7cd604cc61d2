"""Language models: taper configs, causal LMs and ParaFormer-LM, pruning surgery, layer scores."""

from __future__ import annotations

import math

import pytest
import torch

from paraformer import config_from_dict, create_model, list_models
from paraformer.analysis.gfa import skip_importance, theoretical_fan_in
from paraformer.analysis.stats import spearman
from paraformer.checkpoint import load_model, save_model
from paraformer.config import LMConfig, ParaLMConfig, width_schedule
from paraformer.errors import ConfigError, ShapeError
from paraformer.models import CausalLM, ParaFormerLM, build_model, get_config
from paraformer.surgery.prune import prune_layers, skip_forward
from paraformer.surgery.scores import (
    block_influence,
    choose_removal,
    finercut_order,
    js_divergence,
    lowest,
)
from paraformer.train.grad_stats import GradientStats

LM_PRESETS = [n for n in list_models() if get_config(n).family in ("lm", "paraformer_lm")]
TINY = dict(vocab_size=11, context=16, dim=16, head_dim=4)


def tiny_lm(depth: int = 4, **kw) -> CausalLM:
    torch.manual_seed(0)
    cfg = LMConfig(**TINY, depth=depth, heads=(2,) * depth, mlp_dims=(24,) * depth, **kw)
    return CausalLM(cfg).eval()


def tokens(b: int = 3, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 11, (b, t), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------- configs


def test_width_schedule_keeps_the_mean_and_tapers_linearly() -> None:
    widths = width_schedule(512, 8, 1.5, 0.5)
    assert sum(widths) == 8 * 512 and widths[0] == 768 and widths[-1] == 256
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    assert width_schedule(4, 8, 1.5, 0.5) == (6, 5, 5, 4, 4, 3, 3, 2)
    assert width_schedule(4, 8, 0.5, 1.5) == (2, 3, 3, 4, 4, 5, 5, 6)


def test_a_taper_that_reaches_zero_width_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="reaches zero"):
        width_schedule(512, 8, 2.0, 0.0)
    with pytest.raises(ConfigError, match="zero"):
        LMConfig(**TINY, depth=3, heads=(2, 1, 0), mlp_dims=(8, 8, 8))
    with pytest.raises(ConfigError, match="mlp_dims lists 2 value"):
        LMConfig(**TINY, depth=3, heads=(2, 2, 2), mlp_dims=(8, 8))
    with pytest.raises(ConfigError, match="neither attention nor FFN"):
        LMConfig(**TINY, depth=2, heads=(2, 2), mlp_dims=(8, 8), no_attn=(1,), no_mlp=(1,))


@pytest.mark.parametrize("scale", ["small", "base"])
def test_every_variant_has_the_uniform_parameter_count_and_flops(scale: str) -> None:
    names = [f"{n}_{scale}" for n in ("lm_uniform", "cascadeformer", "lm_widening", "paraformer_lm")]
    cfgs = [get_config(n).replace(context=8) for n in names]
    models = [build_model(c) for c in cfgs]
    assert len({m.num_params() for m in models}) == 1
    assert len({m.flops() for m in models}) == 1
    taper = get_config(f"cascadeformer_{scale}")
    assert (
        list(taper.mlp_dims) == sorted(taper.mlp_dims, reverse=True)
        and taper.mlp_dims[0] > taper.mlp_dims[-1]
    )


@pytest.mark.parametrize("name", LM_PRESETS)
def test_every_lm_preset_forwards_backwards_and_round_trips_its_config(name: str) -> None:
    cfg = get_config(name)
    assert config_from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg.replace(context=8))
    logits = model(torch.randint(0, cfg.vocab_size, (2, 8)))
    assert logits.shape == (2, 8, cfg.vocab_size)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------- models


def test_attention_is_causal_and_the_head_is_tied() -> None:
    model = tiny_lm()
    x = tokens()
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 11
    torch.testing.assert_close(model(x)[:, :7], model(y)[:, :7])
    assert not torch.allclose(model(x)[:, 7:], model(y)[:, 7:])
    assert not any("head" in n for n, _ in model.named_parameters())  # logits read the embedding
    assert "tok_emb.weight" in model.no_weight_decay()


def test_a_sequence_beyond_the_context_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="beyond the model's context of 16"):
        tiny_lm()(torch.zeros(1, 17, dtype=torch.long))


def test_paraformer_lm_prefixes_are_sums_of_branches(tmp_path) -> None:
    torch.manual_seed(0)
    model = ParaFormerLM(ParaLMConfig(**TINY, heads=2, mlp_dim=24, num_branches=3, branch_depth=2)).eval()
    x = tokens()
    prefixes = model.prefix_logits(x)
    assert prefixes.shape == (3, 3, 12, 11)
    for k in range(1, 4):
        torch.testing.assert_close(prefixes[k - 1], model(x, branches=k))
    save_model(tmp_path, model)
    torch.testing.assert_close(load_model(tmp_path)(x), model(x))


def test_generate_samples_greedy_and_top_k_within_the_context() -> None:
    model = tiny_lm()
    prompt = tokens(2, 3)
    greedy = model.generate(prompt, 20, temperature=0)  # runs past the 16-token context
    assert greedy.shape == (2, 23) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(model.generate(prompt, 20, temperature=1.0, top_k=1), greedy)
    g = torch.Generator().manual_seed(3)
    a = model.generate(prompt, 5, temperature=0.9, top_k=4, generator=g)
    b = model.generate(prompt, 5, temperature=0.9, top_k=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="temperature"):
        model.generate(prompt, 1, temperature=-1.0)


# ---------------------------------------------------------------------------- pruning


def test_a_pruned_model_equals_the_full_model_with_those_layers_skipped() -> None:
    model = tiny_lm(depth=5)
    x = tokens()
    pruned = prune_layers(model, layers=[1, 3])
    assert pruned.cfg.depth == 3 and len(pruned.blocks) == 3
    torch.testing.assert_close(pruned(x), skip_forward(model, x, [1, 3]))
    assert model.cfg.depth == 5  # pure: the original is untouched


def test_sub_layer_pruning_equals_dropping_those_residual_terms() -> None:
    model = tiny_lm(depth=3)
    x = tokens()
    pruned = prune_layers(model, attn=[0], mlp=[2])
    h = model.embed(x)
    b0, b1, b2 = model.blocks
    h = h + b0.mlp(b0.norm2(h))
    h = b1(h)
    h = h + b2.attn(b2.norm1(h))
    torch.testing.assert_close(pruned(x), model.readout(h))
    both = prune_layers(pruned, attn=[2])  # layer 2 loses its last sub-layer: removed whole
    assert both.cfg.depth == 2
    torch.testing.assert_close(both(x), prune_layers(model, attn=[0], layers=[2])(x))


def test_removing_every_layer_or_a_branched_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="--remove 4"):
        choose_removal("magnitude", tiny_lm(depth=4), 4)
    with pytest.raises(ConfigError, match="sequential"):
        prune_layers(create_model("paraformer_lm_small"), layers=[0])


def test_scorers_rank_layers_and_finercut_removes_the_least_disruptive_sub_layer() -> None:
    model = tiny_lm(depth=4)
    x = tokens()
    with torch.no_grad():  # make layer 2 an identity: every data-driven scorer must find it
        for p in model.blocks[2].parameters():
            p.zero_()
    bi = block_influence(model, x)
    assert min(range(4), key=lambda i: bi[i]) == 2 and bi[2] == pytest.approx(0.0, abs=1e-6)
    assert choose_removal("angular", model, 1, batches=x).layers == [2]
    assert choose_removal("block-influence", model, 1, batches=x).layers == [2]
    order = finercut_order(model, x, steps=2)
    assert set(order) == {(2, "attn"), (2, "mlp")}
    assert js_divergence(model(x), model(x)) == pytest.approx(0.0, abs=1e-7)
    assert choose_removal(
        "cascadeflow", model, 2, grad_record={"grad_norm_sum": [4.0, 1.0, 3.0, 2.0]}
    ).layers == [1, 3]


def test_spearman_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties: mean ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert lowest([3.0, 1.0, 1.0, 2.0], 2) == [1, 2]


# ---------------------------------------------------------------------------- gradients


class _Trainer:
    def __init__(self, model) -> None:
        self.model = model


def test_gradient_accumulator_matches_a_hand_computation() -> None:
    model = tiny_lm(depth=3).train()
    stats = GradientStats()
    stats.on_start(_Trainer(model))
    expected_norm = torch.zeros(3, dtype=torch.float64)
    expected_taylor = torch.zeros(3, dtype=torch.float64)
    for seed in (1, 2):
        x = torch.randint(0, 11, (2, 10), generator=torch.Generator().manual_seed(seed))
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x).reshape(-1, 11), x.reshape(-1)).backward()
        for i, block in enumerate(model.blocks):
            sq = sum(float((p.grad.double() ** 2).sum()) for p in block.parameters())
            dot = sum(float((p.grad.double() * p.detach().double()).sum()) for p in block.parameters())
            expected_norm[i] += math.sqrt(sq)
            expected_taylor[i] += abs(dot)
        stats.after_backward(_Trainer(model))
    torch.testing.assert_close(stats.norm_sum, expected_norm, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(stats.taylor_sum, expected_taylor, rtol=1e-4, atol=1e-9)
    record: dict = {}
    stats.on_epoch_end(_Trainer(model), record)
    assert record["grad_steps"] == 2 and record["grad_norm"] == pytest.approx((expected_norm / 2).tolist())


def test_fan_in_theory_is_linear_quadratic_under_deep_supervision_and_flat_per_branch() -> None:
    assert theoretical_fan_in(tiny_lm(depth=4).cfg) == [4, 3, 2, 1]
    assert theoretical_fan_in(tiny_lm(depth=4).cfg, deep_supervision=True) == [10, 6, 3, 1]
    para = ParaLMConfig(**TINY, heads=2, mlp_dim=8, num_branches=3, branch_depth=2)
    assert theoretical_fan_in(para, mode="joint") == [2, 1] * 3
    assert theoretical_fan_in(para, mode="fused") == [6, 3, 4, 2, 2, 1]


def test_skip_importance_finds_a_layer_that_matters() -> None:
    model = tiny_lm(depth=3)
    x = tokens()

    def loss(m) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x).reshape(-1, 11), x.reshape(-1)))

    with torch.no_grad():
        for p in model.blocks[1].parameters():
            p.zero_()
    base, increases = skip_importance(model, loss)
    assert base == pytest.approx(loss(model))
    assert increases[1] == pytest.approx(0.0, abs=1e-6) and increases[0] != 0.0
    torch.testing.assert_close(model(x), skip_forward(model, x, [1]))
