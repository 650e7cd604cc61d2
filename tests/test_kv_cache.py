"""KV-cached decoding: cache == recompute for every LM family, the past-context rule, bad input, lm bench."""

from __future__ import annotations

import json

import pytest
import torch

from paraformer.cli import main
from paraformer.commands.lm_bench import bench, format_table
from paraformer.config import LMConfig
from paraformer.errors import ConfigError, ShapeError
from paraformer.layers import Attention
from paraformer.models import build_model, get_config
from paraformer.models.kv_cache import KVCache

CONTEXT = 16
TINY = dict(dim=32, head_dim=8, context=CONTEXT)
PRESETS = ["lm_uniform_small", "cascadeformer_small", "lm_widening_small", "paraformer_lm_small"]


def family(name: str) -> torch.nn.Module:
    """A tiny model of each family, random weights (gates made non-zero so they matter)."""
    torch.manual_seed(0)
    if name == "pruned":
        cfg = LMConfig(vocab_size=50, **TINY, depth=4, heads=(2, 3, 1, 2), mlp_dims=(40, 8, 24, 16))
        cfg = cfg.replace(no_attn=(1,), no_mlp=(2,))
    elif name == "paraformer_lm_gated":
        cfg = get_config("paraformer_lm_small", **TINY, vocab_size=50, num_branches=3, gated_branches=(2,))
    else:  # the preset's own layout and width schedule at a tiny width
        cfg = get_config(name, **TINY, vocab_size=50)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gate"):
                p.fill_(0.7)
    return model


def prompt(b: int = 2, t: int = 5, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


FAMILIES = [*PRESETS, "paraformer_lm_gated", "pruned"]


# ---------------------------------------------------------------------------- cache == recompute


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_greedy_decoding_equals_recompute_within_the_context(name: str) -> None:
    model = family(name)
    x = prompt()
    cached, cached_logits = model.generate(x, CONTEXT - 5, temperature=0, return_logits=True)
    plain, plain_logits = model.generate(x, CONTEXT - 5, temperature=0, use_cache=False, return_logits=True)
    assert cached.shape == (2, CONTEXT) and torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=1e-5, atol=1e-5)
    # and both equal one forward of the whole sequence, position by position
    torch.testing.assert_close(cached_logits, model(cached)[:, 4:-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cascadeformer_small", "paraformer_lm_small", "pruned"])
def test_a_chunk_after_cached_positions_equals_one_forward(name: str) -> None:
    model = family(name)
    x = prompt(3, 12)
    cache = model.new_cache(3)
    with torch.no_grad():
        parts = [model(x[:, :5], cache=cache), model(x[:, 5:6], cache=cache), model(x[:, 6:], cache=cache)]
        torch.testing.assert_close(torch.cat(parts, dim=1), model(x), rtol=1e-5, atol=1e-5)
    assert cache.length == 12


def test_the_cache_holds_one_entry_per_layer_with_its_own_head_count() -> None:
    model = family("pruned")  # heads 2, 3, 1, 2; layer 1 has no attention
    cache = model.new_cache(2)
    with torch.no_grad():
        model(prompt(), cache=cache)
    assert cache.keys[1] is None and cache.values[1] is None
    assert [k.shape for k in cache.keys if k is not None] == [(2, h, CONTEXT, 8) for h in (2, 1, 2)]
    para = family("paraformer_lm_small")
    assert len(para.new_cache(1).keys) == para.cfg.num_branches * para.cfg.branch_depth


def test_sampling_with_a_seed_is_the_same_with_and_without_the_cache() -> None:
    model = family("cascadeformer_small")
    a = model.generate(prompt(), 8, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(
        prompt(), 8, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(3), use_cache=False
    )
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- past the context


def expected_windows(prompt_len: int, steps: int, context: int) -> list[tuple[int, int]]:
    """The rule of `generate`, stated independently: the (start, end) window each step reads."""
    windows, start, cached = [], max(0, prompt_len - context), 0
    for i in range(steps):
        end = prompt_len + i
        if cached == 0:
            cached = end - start
        elif cached == context:
            start = end - max(1, context // 2)
            cached = end - start
        else:
            cached += 1
        windows.append((start, end))
    return windows


@pytest.mark.parametrize("name", ["lm_widening_small", "paraformer_lm_small"])
def test_past_the_context_the_cache_re_prefills_half_a_context(name: str) -> None:
    model = family(name)
    x = prompt(2, 3)
    steps = 40
    out, logits = model.generate(x, steps, temperature=0, return_logits=True)
    windows = expected_windows(3, steps, CONTEXT)
    assert windows[13] == (0, 16) and windows[14] == (9, 17) and windows[22] == (9, 25)
    assert windows[23] == (18, 26)  # 8 tokens, then 8 cheap steps up to a full cache, again
    with torch.no_grad():
        for i, (start, end) in enumerate(windows):
            torch.testing.assert_close(logits[:, i], model(out[:, start:end])[:, -1], rtol=1e-5, atol=1e-5)
        # where the windows differ, the recompute (last `context` tokens) gives other logits
        recompute = model(out[:, 17 - CONTEXT : 17])[:, -1]
    assert not torch.allclose(logits[:, 14], recompute, atol=1e-4)


def test_a_prompt_longer_than_the_context_is_cut_to_its_last_context_tokens() -> None:
    model = family("lm_uniform_small")
    long = prompt(1, CONTEXT + 7)
    out, logits = model.generate(long, 3, temperature=0, return_logits=True)
    _, plain = model.generate(long, 1, temperature=0, use_cache=False, return_logits=True)
    with torch.no_grad():
        torch.testing.assert_close(logits[:, 0], model(long[:, -CONTEXT:])[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, 0], plain[:, 0], rtol=1e-5, atol=1e-5)
    assert out.shape == (1, CONTEXT + 10) and torch.equal(out[:, : CONTEXT + 7], long)


# ---------------------------------------------------------------------------- bad input


def test_a_cache_refuses_another_batch_size_and_positions_past_the_context() -> None:
    model = family("lm_uniform_small")
    cache = model.new_cache(2)
    with torch.no_grad(), pytest.raises(ShapeError, match="batch size 2, got a batch of 3"):
        model(prompt(3, 4), cache=cache)
    with torch.no_grad():
        model(prompt(2, CONTEXT), cache=cache)
        with pytest.raises(ShapeError, match="context of 16"):
            model(prompt(2, 1), cache=cache)
    with pytest.raises(ConfigError, match="select_branches"):
        family("paraformer_lm_small")(prompt(), branches=1, cache=KVCache(2, CONTEXT, 4))
    with pytest.raises(ConfigError, match="causal"):
        Attention(8, 2)(torch.zeros(1, 3, 8), KVCache(1, 4, 1))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(temperature=float("inf")), "finite"),
        (dict(temperature=float("nan")), "finite"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=-5), "top_k"),
        (dict(top_k=2.5), "top_k"),
    ],
)
def test_generate_refuses_bad_sampling_settings(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        family("lm_uniform_small").generate(prompt(), 2, **kwargs)


def test_generate_refuses_a_bad_prompt_or_token_count() -> None:
    model = family("lm_uniform_small")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        model.generate(prompt(), -1)
    with pytest.raises(ShapeError, match="T >= 1"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 1)
    assert torch.equal(model.generate(prompt(), 0), prompt())


@pytest.mark.parametrize(
    "flags, words", [(["--top-k", "-5"], "--top-k: -5 is out of range"), (["--temperature", "inf"], "finite")]
)
def test_lm_sample_refuses_a_negative_top_k_and_an_infinite_temperature(
    tmp_path, capsys, flags, words
) -> None:
    assert main(["lm", "sample", str(tmp_path), *flags]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, last


# ---------------------------------------------------------------------------- flops and bench


def test_flops_per_token_is_two_per_matmul_weight_plus_attention_over_the_context() -> None:
    model = family("pruned")
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    weights += model.tok_emb.weight.numel()  # the tied head
    attention = 4 * CONTEXT * model.attention_width()
    assert model.flops_per_token() == 2 * weights + attention
    assert model.flops() == CONTEXT * model.flops_per_token()


BENCH = ["--set", "dim=32", "--set", "head_dim=8", "--set", "context=16"]
SMALL = [
    "--rounds",
    "1",
    "--prompt-len",
    "4",
    "--new-tokens",
    "3",
    "--decode-batch",
    "2",
    "--train-batch",
    "2",
]


def test_lm_bench_reports_every_figure_for_each_model(capsys) -> None:
    names = ["lm_uniform_small", "paraformer_lm_small", "cascadeformer_small"]
    assert main(["lm", "bench", *names, *BENCH, *SMALL, "--uncached", "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["models"]) == names and r["settings"]["prompt_len"] == 4 and r["settings"]["seq_len"] == 16
    for name in names:
        row = r["models"][name]
        model = build_model(get_config(name, dim=32, head_dim=8, context=16))
        assert row["params"] == model.num_params() and row["flops_per_token"] == model.flops_per_token()
        for key in ("prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "train_tokens_per_s"):
            assert row[key] > 0 and len(row["rounds"][key]) == 1, key
        assert row["decode_uncached_ms_per_token"] > 0 and row["cache_speedup"] > 0
    assert len(r["load_average"]["before"]) == 3
    assert set(r["models"][names[0]]["speedup"].values()) == {1.0}  # the first model against itself
    assert main(["lm", "bench", names[0], names[0], *BENCH, *SMALL, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "lm_uniform_small#2" in table and "(1.00x)" in table and "decode ms/token" in table


def test_bench_refuses_decoding_past_the_context_and_non_lm_models(capsys) -> None:
    model = family("lm_uniform_small")
    with pytest.raises(ConfigError, match="within the context"):
        bench({"a": model}, prompt_len=10, new_tokens=7, rounds=1)
    with pytest.raises(ConfigError, match="not a language model"):
        bench({"a": torch.nn.Linear(2, 2)}, prompt_len=1, new_tokens=1)
    assert main(["lm", "bench", "vit_tiny_cifar", "--rounds", "1"]) == 2
    assert "not a language-model preset" in capsys.readouterr().err
    r = bench({"a": model}, prompt_len=2, new_tokens=2, decode_batch=2, train_batch=1, rounds=1)
    assert "a" in format_table(r) and not model.training
