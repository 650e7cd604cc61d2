"""Tokenizers for language models: characters, or byte-level BPE trained locally.

Both serialise to JSON (``to_json``/``tokenizer_from_json``): a run folder stores its
tokenizer as ``tokenizer.json`` beside the weights, and nothing is ever unpickled.
The BPE tokenizer is the Hugging Face ``tokenizers`` library's byte-level BPE, trained
on the training split only, so every byte sequence encodes and decodes losslessly.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np

from paraformer.errors import DataError

KINDS = ("char", "bpe")
MIN_BPE_VOCAB = 257  # the 256 byte symbols and at least one merge


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...

    def to_json(self) -> str: ...


class CharTokenizer:
    """One token per Unicode character of the text it was built from."""

    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("a character vocabulary must list distinct single characters.")
        self.chars = list(chars)
        self.codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self.order = np.argsort(self.codes)

    @classmethod
    def build(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        sorted_codes = self.codes[self.order]
        pos = np.searchsorted(sorted_codes, points).clip(max=len(sorted_codes) - 1)
        known = sorted_codes[pos] == points
        if not known.all():
            at = int(np.argmin(known))
            ch = chr(int(points[at]))
            raise DataError(
                f"character {ch!r} (U+{ord(ch):04X}) at offset {at} is not in the model's vocabulary of "
                f"{self.vocab_size} characters; a char tokenizer knows only its training text's characters "
                "(train with --tokenizer bpe for open text)."
            )
        return self.order[pos].astype(np.int64)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "chars": self.chars})


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_BPE_VOCAB:
            raise DataError(
                f"a byte-level BPE vocabulary needs at least {MIN_BPE_VOCAB} tokens, got {vocab_size}."
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            special_tokens=[],
        )
        lines = text.splitlines(keepends=True)
        tok.train_from_iterator((lines[i : i + 1000] for i in range(0, len(lines), 1000)), trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        lines = text.splitlines(keepends=True) or [""]
        # Line by line, as in training: no token spans a line break, and memory stays flat.
        chunks = [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(lines)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def to_json(self) -> str:
        return json.dumps({"kind": "bpe", "tokenizer": json.loads(self.tokenizer.to_str())})


def tokenizer_from_json(text: str, source: str = "tokenizer.json") -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer written by ``to_json``; a damaged file is a one-line error."""
    try:
        data = json.loads(text)
        if data.get("kind") == "char":
            return CharTokenizer([str(c) for c in data["chars"]])
        if data.get("kind") == "bpe":
            from tokenizers import Tokenizer as HFTokenizer

            return BPETokenizer(HFTokenizer.from_str(json.dumps(data["tokenizer"])))
    except Exception as err:  # json, key and the tokenizers library's own errors alike
        raise DataError(f"{source} is not a valid paraformer tokenizer ({err}).") from None
    raise DataError(f"{source} names an unknown tokenizer kind; expected one of {KINDS}.")
