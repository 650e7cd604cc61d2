"""Language-model runs: tokenizers and the token cache, a real run that learns, resume, the CLI, bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paraformer.data.text import load_corpus, read_text
from paraformer.data.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_json
from paraformer.errors import DataError
from paraformer.launch import resume as resume_lm
from paraformer.launch import train as train_lm
from paraformer.tasks.text import LMTrainConfig

SHARED = Path(
    os.environ.get("PARAFORMER_TEST_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)
SHAKESPEARE = SHARED / "text" / "tinyshakespeare.txt"
# A small LM: 4 layers of width 32, context 32; a few hundred ms per step on 2 cores.
TINY = {
    "dim": 32,
    "depth": 4,
    "heads": [2, 2, 1, 1],
    "mlp_dims": [96, 80, 48, 32],
    "head_dim": 16,
    "context": 32,
}
TINY_FLAGS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
TEXT = "".join(
    f"{w} the quick brown fox jumps over the lazy dog {i % 7}.\n" for i, w in enumerate(["a", "b"] * 200)
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PARAFORMER_NO_CACHE", raising=False)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT + "Ünïcödé ✓\n")
    return path


def quiet(_: str) -> None:
    pass


def small_cfg(data: Path, **kw) -> LMTrainConfig:
    base = dict(
        data=str(data), model="cascadeformer_small", model_overrides=TINY, batch_size=8, eval_interval=5
    )
    return LMTrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- tokenizers and data


def test_char_and_bpe_tokenizers_round_trip_any_text() -> None:
    text = "Hello, wörld!\n\n  tabs\tand emoji 😀 ok"
    char = CharTokenizer.build(text)
    assert char.decode(char.encode(text)) == text
    assert tokenizer_from_json(char.to_json()).decode(char.encode(text)) == text
    bpe = BPETokenizer.train(TEXT, 300)
    assert 256 < bpe.vocab_size <= 300  # merges stop when no pair repeats
    for sample in (text, TEXT[:500], "unseen ½ symbols ∑"):
        ids = bpe.encode(sample)
        assert bpe.decode(ids) == sample
        assert tokenizer_from_json(bpe.to_json()).encode(sample).tolist() == ids.tolist()
    assert len(bpe.encode(TEXT)) < len(TEXT) / 2  # merges were learned
    with pytest.raises(DataError, match="not in the model's vocabulary"):
        char.encode("hello Z")


def test_tokens_are_cached_under_a_key_that_changes_with_the_file(text_file: Path, tmp_path: Path) -> None:
    first = load_corpus(text_file, tokenizer="bpe", vocab_size=300)
    entries = list((tmp_path / "cache").rglob("meta.json"))
    assert len(entries) == 1
    again = load_corpus(text_file, tokenizer="bpe", vocab_size=300)
    assert torch.equal(again.tokens["train"], first.tokens["train"])
    assert again.chars == first.chars and sum(first.chars.values()) > 0.9 * len(TEXT)
    text_file.write_text(TEXT.replace("fox", "cat"))
    changed = load_corpus(text_file, tokenizer="bpe", vocab_size=300)
    assert len(list((tmp_path / "cache").rglob("meta.json"))) == 2
    assert changed.sha256 != first.sha256


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"caf\xe9 latin-1\n", "not UTF-8"),
    ],
)
def test_empty_or_non_utf8_text_is_a_one_line_error(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=words):
        read_text(path)


# ---------------------------------------------------------------------------- training


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="Tiny Shakespeare not found beside the clone")
def test_short_real_run_on_tiny_shakespeare_beats_the_unigram_entropy(tmp_path: Path) -> None:
    # A constant rate: a cosine decay over so few steps costs a third of what they learn.
    cfg = small_cfg(
        SHAKESPEARE,
        max_steps=100,
        batch_size=16,
        eval_interval=50,
        lr=4e-3,
        warmup_epochs=0,
        min_lr_ratio=1.0,
    )
    summary = train_lm(cfg, tmp_path / "run", log=quiet, progress=False)
    train = load_corpus(SHAKESPEARE).tokens["train"]
    p = torch.bincount(train, minlength=65).double() / train.numel()
    unigram = float(-(p[p > 0] * p[p > 0].log()).sum())  # about 3.3 nats per character
    assert summary["val_loss"] < unigram - 0.5, (summary["val_loss"], unigram)
    assert summary["test_bpc"] == pytest.approx(summary["test_loss"] / math.log(2), rel=1e-3)  # char tokens
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history[-1]["grad_norm_sum"]) == 4 and history[-1]["grad_steps"] == 100
    # Gradient fan-in: the first layer gets a larger gradient than the last.
    assert history[-1]["grad_norm"][0] > history[-1]["grad_norm"][-1]


def test_resume_continues_exactly_with_the_gradient_sums(text_file: Path, tmp_path: Path) -> None:
    cfg = small_cfg(text_file, max_steps=12, eval_interval=4, seed=3)
    straight = train_lm(cfg, tmp_path / "a", log=quiet, progress=False)
    train_lm(cfg, tmp_path / "b", log=quiet, progress=False, stop_after_epochs=1)
    resumed = resume_lm(tmp_path / "b", log=quiet, progress=False)
    assert resumed["val_loss"] == straight["val_loss"]
    wa, wb = (
        load_file(str(tmp_path / "a/model.safetensors")),
        load_file(str(tmp_path / "b/model.safetensors")),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    a, b = (
        [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()][-1]
        for d in ("a", "b")
    )
    for key in ("grad_norm_sum", "grad_taylor_sum", "grad_norm", "grad_steps", "val_loss"):
        assert a[key] == b[key], key


def test_deep_supervision_and_paraformer_lm_train(text_file: Path, tmp_path: Path) -> None:
    deep = train_lm(
        small_cfg(text_file, max_steps=4, deep_supervision=True), tmp_path / "ds", log=quiet, progress=False
    )
    assert deep["mode"] == "deep-supervision"
    para = small_cfg(
        text_file,
        model="paraformer_lm_small",
        model_overrides={
            "dim": 32,
            "heads": 2,
            "head_dim": 16,
            "mlp_dim": 64,
            "num_branches": 2,
            "context": 32,
        },
        max_steps=4,
    )
    summary = train_lm(para, tmp_path / "para", log=quiet, progress=False)
    assert summary["mode"] == "fused" and len(summary["test_ppl_prefix"]) == 2
