"""Merged inference equals the model at every prefix; prepare_for_inference returns an equal module."""

from __future__ import annotations

import warnings

import pytest
import torch

from paraformer.errors import ConfigError
from paraformer.models import build_model, get_config
from paraformer.parallel import inference as inference_module
from paraformer.parallel import merge_for_inference, prepare_for_inference

SMALL = dict(dim=32, heads=2, mlp_dim=64)


def perturbed(name: str, **overrides) -> torch.nn.Module:
    """A tiny preset model whose LayerNorms and biases are far from their initial values.

    Fresh LayerNorms (weight 1, bias 0) would make every fold trivially exact.
    """
    torch.manual_seed(0)
    model = build_model(get_config(name, **SMALL, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model


def images(model: torch.nn.Module, batch: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn_like(model.example_input(batch))


def assert_equal_outputs(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=0.0, atol=2e-5)


@pytest.mark.parametrize("residual", ["standard", "normed"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_merged_equals_the_model_at_every_kept_prefix(residual: str, pool: str, depth: int) -> None:
    model = perturbed(
        "paraformer_tiny_fmnist",
        num_branches=3,
        branch_depth=depth,
        residual=residual,
        pool=pool,
        qkv_bias=depth == 2,
    )
    for batch in (1, 3):
        x = images(model, batch)
        for kept in (3, 2):
            merged = merge_for_inference(model, branches=kept)
            with torch.no_grad():
                for k in range(1, kept + 1):
                    assert_equal_outputs(merged(x, branches=k), model(x, branches=k))
                assert_equal_outputs(merged(x), model(x, branches=kept))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_gated_branch_is_folded_exactly(pool: str) -> None:
    model = perturbed("paraformer_tiny_cifar", num_branches=3, gated_branches=(1, 2), pool=pool)
    with torch.no_grad():
        model.branches[1].gate.fill_(0.6)
        model.branches[2].gate.fill_(-1.3)
    merged = merge_for_inference(model)
    x = images(model, 2)
    with torch.no_grad():
        for k in (1, 2, 3):
            assert_equal_outputs(merged(x, branches=k), model(x, branches=k))
    for residual in ("normed",):
        normed = perturbed("paraformer_tiny_cifar", num_branches=2, gated_branches=(1,), residual=residual)
        with torch.no_grad():
            normed.branches[1].gate.fill_(0.4)
            assert_equal_outputs(merge_for_inference(normed)(x), normed(x))


@pytest.mark.parametrize("residual", ["standard", "normed"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_merged_vit_equals_the_vit(residual: str, pool: str) -> None:
    vit = perturbed("vit_tiny_cifar", depth=3, residual=residual, pool=pool)
    merged = merge_for_inference(vit)
    for batch in (1, 4):
        x = images(vit, batch)
        with torch.no_grad():
            assert_equal_outputs(merged(x), vit(x))
    with pytest.raises(ConfigError, match="no branches"):
        merge_for_inference(vit, branches=2)


def test_large_batches_run_in_chunks_with_the_same_outputs() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=2)
    merged = merge_for_inference(model)
    assert merged.chunk >= 1
    merged.chunk = 2
    x = images(model, 5)
    with torch.no_grad():
        assert_equal_outputs(merged(x), model(x))
        assert_equal_outputs(merged(x, branches=1), model(x, branches=1))


def test_merging_leaves_the_model_untouched_and_needs_no_autograd() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merge_for_inference(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not list(merged.parameters()) and not merged.training
    assert merged(images(model, 1)).grad_fn is None


def test_a_prefix_beyond_what_was_kept_is_a_one_line_error() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=4)
    merged = merge_for_inference(model, branches=2)
    with pytest.raises(ConfigError) as error:
        merged(images(model, 1), branches=3)
    message = str(error.value)
    assert "\n" not in message
    assert "kept the first 2 of 4 branches" in message and "merge_for_inference(model, branches=3)" in message
    with pytest.raises(ConfigError, match="prefixes only"):
        merged(images(model, 1), branches=[0, 1])
    with pytest.raises(ConfigError, match="1..4"):
        merge_for_inference(model, branches=5)


def test_class_token_pooling_computes_only_what_the_head_reads() -> None:
    cls = merge_for_inference(perturbed("paraformer_tiny_fmnist", num_branches=2, pool="cls"))
    mean = merge_for_inference(perturbed("paraformer_tiny_fmnist", num_branches=2, pool="mean"))
    full = perturbed("paraformer_tiny_fmnist", num_branches=2, pool="cls").flops()
    assert cls.flops() < 0.8 * mean.flops()
    assert mean.flops() == pytest.approx(full, rel=0.02)  # nothing left out, nothing added


def test_merged_module_exports_to_onnx_and_matches_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = perturbed("paraformer_tiny_fmnist", num_branches=3)
    merged = merge_for_inference(model)
    path = tmp_path / "merged.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            merged,
            (images(model, 2),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 5):
        x = images(model, batch)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, model(x), rtol=0.0, atol=1e-5)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("path", ["eager", "merged", "threads"])
def test_each_cpu_path_returns_a_module_with_the_models_outputs(path: str, two_threads) -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=3, gated_branches=(2,))
    with torch.no_grad():
        model.branches[2].gate.fill_(0.5)
    x = images(model, 2)
    lines: list[str] = []
    prepared = prepare_for_inference(model, x, paths=[path], rounds=1, log=lines.append)
    assert prepared.inference_path == path and set(prepared.timings_ms) == {path}
    assert not prepared.training and len(lines) == 1 and path in lines[0]
    with torch.no_grad():
        assert_equal_outputs(prepared(x), model(x))
        assert_equal_outputs(prepared(x[:1]), model(x[:1]))
        assert_equal_outputs(prepared(x, branches=1), model(x, branches=1))
    assert torch.get_num_threads() == 2, "the calling thread's thread count is restored"
    assert model.training is False and all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_compiled_path_returns_a_module_with_the_models_outputs() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=2)
    x = images(model, 2)
    prepared = prepare_for_inference(model, x, paths=["merged+compile"], rounds=1)
    assert prepared.inference_path == "merged+compile"
    with torch.no_grad():
        assert_equal_outputs(prepared(x), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_path_returns_a_module_with_the_models_outputs() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=3).cuda()
    x = images(model, 2).cuda()
    prepared = prepare_for_inference(model, x, paths=["cuda-graph"], rounds=2)
    assert prepared.inference_path == "cuda-graph"
    with torch.no_grad():
        first = prepared(x)
        assert_equal_outputs(prepared(x + 1), model(x + 1))  # a replay with new input
        assert_equal_outputs(first, model(x))  # the first output is not overwritten
        assert_equal_outputs(prepared(x[:1]), model(x[:1]))  # another shape: the merged module


def test_the_choice_is_measured_once_and_cached_in_memory(two_threads, monkeypatch) -> None:
    model = perturbed("vit_tiny_fmnist", depth=2)
    x = images(model, 1)
    calls = []
    real = inference_module.measure
    monkeypatch.setattr(inference_module, "measure", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    lines: list[str] = []
    first = prepare_for_inference(model, x, paths=["eager", "merged", "threads"], rounds=2, log=lines.append)
    assert first.inference_path in ("eager", "merged") and set(first.timings_ms) == {"eager", "merged"}
    assert any("threads skipped" in line for line in lines), "a ViT has no branches to thread"
    again = prepare_for_inference(model, x, paths=["eager", "merged", "threads"], rounds=2, log=lines.append)
    assert again.inference_path == first.inference_path and len(calls) == 1
    assert "cached" in lines[-1]
    torch.set_num_threads(1)  # another thread count is another key: measured again
    prepare_for_inference(model, x, paths=["eager", "merged", "threads"], rounds=2)
    assert len(calls) == 2


def test_bad_arguments_are_config_errors() -> None:
    model = perturbed("paraformer_tiny_fmnist", num_branches=2)
    x = images(model, 1)
    with pytest.raises(ConfigError, match="unknown inference path"):
        prepare_for_inference(model, x, paths=["fast"])
    with pytest.raises(ConfigError, match="rounds"):
        prepare_for_inference(model, x, rounds=0)
    with pytest.raises(ConfigError, match="no branches"):
        prepare_for_inference(perturbed("vit_tiny_fmnist", depth=2), x, branches=1)
