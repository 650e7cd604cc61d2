"""Models: every preset runs, prefixes are sums of branches, twins match."""

from __future__ import annotations

import pytest
import torch

from paraformer import ParaFormerConfig, ViTConfig, config_from_dict, create_model, list_models
from paraformer.errors import ConfigError, ShapeError
from paraformer.models import ParaFormer, ViT, build_model, get_config, twin_of

# Small stand-ins with the same structure, so the tests stay fast on 2 cores.
TINY = dict(image_size=8, patch_size=4, in_channels=3, num_classes=5, dim=12, heads=3, mlp_dim=24)


def tiny_paraformer(**kw) -> ParaFormer:
    torch.manual_seed(0)
    return ParaFormer(ParaFormerConfig(**{**TINY, "num_branches": 3, "branch_depth": 2, **kw})).eval()


IMAGE_PRESETS = [n for n in list_models() if get_config(n).family in ("vit", "paraformer")]


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_every_preset_forwards_and_backwards(name: str) -> None:
    cfg = get_config(name)
    small = cfg.replace(image_size=cfg.patch_size * 2)  # 4 patches: same code path, tiny input
    model = build_model(small)
    x = torch.randn(2, small.in_channels, small.image_size, small.image_size)
    logits = model(x)
    assert logits.shape == (2, small.num_classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter gets a gradient"


@pytest.mark.parametrize("name", [n for n in IMAGE_PRESETS if n.startswith("paraformer_")])
def test_twins_have_exactly_the_same_parameter_count(name: str) -> None:
    twin = twin_of(name)
    assert twin is not None and twin_of(twin) == name
    assert create_model(name).num_params() == create_model(twin).num_params()


def test_paper_preset_matches_the_papers_parameter_count() -> None:
    model = create_model("paraformer_paper")
    assert model.num_params() == 7_298_506  # SPEC: about 7.30M for CIFAR-10
    block = sum(p.numel() for p in model.branches[0][0].parameters())
    assert block == 444_288  # SPEC: one attention+MLP layer
    kept = model.num_params() - 7 * 2 * block
    assert round(kept / 1e6, 2) == 1.08  # SPEC: one branch of eight leaves about 1.08M


def test_prefix_forward_equals_manual_sum_of_branches() -> None:
    model = tiny_paraformer()
    x = torch.randn(4, 3, 8, 8)
    tokens = model.embed(x)
    outputs = [branch(tokens) for branch in model.branches]
    for k in range(1, 4):
        manual = model.head(sum(outputs[:k]))
        torch.testing.assert_close(model(x, branches=k), manual)
    torch.testing.assert_close(model(x), model(x, branches=3))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_prefix_logits_match_per_prefix_forward(pool: str) -> None:
    model = tiny_paraformer(pool=pool)
    x = torch.randn(4, 3, 8, 8)
    all_prefixes = model.prefix_logits(x)
    assert all_prefixes.shape == (3, 4, 5)
    for k in range(1, 4):
        torch.testing.assert_close(all_prefixes[k - 1], model(x, branches=k))


def test_explicit_branch_indices_select_those_branches() -> None:
    model = tiny_paraformer()
    x = torch.randn(2, 3, 8, 8)
    tokens = model.embed(x)
    manual = model.head(model.branches[0](tokens) + model.branches[2](tokens))
    torch.testing.assert_close(model(x, branches=[0, 2]), manual)


@pytest.mark.parametrize("residual", ["standard", "normed"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_one_branch_paraformer_equals_vit_with_the_same_weights(residual: str, pool: str) -> None:
    para = tiny_paraformer(num_branches=1, branch_depth=4, residual=residual, pool=pool)
    vit = ViT(para.cfg.vit_twin()).eval()
    state = {k.replace("branches.0.", "blocks."): v for k, v in para.state_dict().items()}
    vit.load_state_dict(state)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(vit(x), para(x))


def test_normed_residual_differs_from_standard() -> None:
    x = torch.randn(2, 3, 8, 8)
    a = tiny_paraformer(residual="standard")
    b = tiny_paraformer(residual="normed")
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_is_right_for_any_head_count(heads: int) -> None:
    """Compare with a straightforward per-head implementation."""
    torch.manual_seed(0)
    cfg = ParaFormerConfig(**{**TINY, "dim": 16, "heads": heads, "num_branches": 1, "branch_depth": 1})
    attn = ParaFormer(cfg).branches[0][0].attn.eval()
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    hd = 16 // heads
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / hd**0.5, dim=-1)
        outs.append(w @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.out(torch.cat(outs, dim=-1)))


def test_flops_include_attention_and_scale_with_branches() -> None:
    one = tiny_paraformer(num_branches=1).flops()
    three = tiny_paraformer(num_branches=3).flops()
    assert one > 0 and 2.0 < (three - 0) / one < 3.0  # branches dominate, embedding/head shared
    cfg = get_config("vit_tiny_cifar")
    tokens, dim = cfg.num_patches + 1, cfg.dim
    attention = cfg.depth * 4 * tokens * tokens * dim
    linear = cfg.depth * 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * cfg.mlp_dim)
    flops = create_model("vit_tiny_cifar").flops()
    assert linear + attention < flops < 1.1 * (linear + attention)


def test_no_weight_decay_names_embeddings_and_norms() -> None:
    names = tiny_paraformer().no_weight_decay()
    assert {"embed.pos_embed", "embed.cls_token", "head.norm.weight"} <= names
    assert "branches.0.0.attn.qkv.weight" not in names


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(dim=10, heads=3), "divisible by heads"),
        (dict(num_branches=0), "num_branches"),
        (dict(branch_depth=0), "branch_depth"),
        (dict(image_size=30, patch_size=4), "divisible by patch_size"),
        (dict(dropout=1.5), "dropout"),
        (dict(pool="max"), "pool"),
        (dict(residual="post"), "residual"),
    ],
)
def test_bad_config_values_fail_with_a_sentence(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ParaFormerConfig(**{**TINY, **kwargs})


def test_config_round_trips_through_dict() -> None:
    cfg = get_config("paraformer_tiny_cifar", num_branches=6)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict({**cfg.to_dict(), "depthh": 3})
    with pytest.raises(ConfigError, match="family"):
        config_from_dict({"family": "resnet"})


def test_unknown_preset_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match="paraformer_tiny_cifar"):
        create_model("paraformer_tiny_cifr")
    with pytest.raises(ConfigError, match="unknown override"):
        create_model("paraformer_tiny_cifar", depth=3)


def test_wrong_input_shapes_raise_shape_errors() -> None:
    model = tiny_paraformer()
    with pytest.raises(ShapeError, match="3-channel"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ShapeError, match="image_size"):
        model(torch.randn(2, 3, 12, 12))
    with pytest.raises(ConfigError, match="out of range"):
        model(torch.randn(2, 3, 8, 8), branches=4)
    with pytest.raises(ConfigError, match="distinct"):
        model(torch.randn(2, 3, 8, 8), branches=[1, 1])
    vit = ViT(ViTConfig(**TINY, depth=2))
    with pytest.raises(ConfigError, match="no branches"):
        vit(torch.randn(2, 3, 8, 8), branches=1)


def test_layers_take_explicit_sizes_and_attention_can_be_causal() -> None:
    from paraformer.layers import Attention, Block

    torch.manual_seed(0)
    attn = Attention(16, 2, head_dim=12, causal=True).eval()
    assert attn.qkv.out_features == 3 * 24 and attn.out.in_features == 24
    x = torch.randn(2, 5, 16)
    y = attn(x)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 2, 16)  # changing later tokens must not change earlier outputs
    torch.testing.assert_close(attn(x2)[:, :3], y[:, :3])
    assert not torch.allclose(attn(x2)[:, 3:], y[:, 3:])
    block = Block(16, 4, 40, causal=True)
    assert block(x).shape == x.shape and block.mlp.net[0].out_features == 40
