"""Text corpora for language models: any UTF-8 file, split, tokenized once and cached.

The text is split by characters into train / validation / test (first, middle and
last parts, in that order, like the usual 90/10 split of Tiny Shakespeare); the BPE
tokenizer is trained on the training part only. Token ids are cached under
``$PARAFORMER_CACHE_DIR`` in a folder whose key hashes the file's *content*, the
tokenizer settings and the split, so an edited file or another setting never reuses
stale tokens; ``meta.json`` is written last (atomically), so a half-written entry is
never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import paraformer.data.cache as cache
from paraformer.data.base import Log, quiet
from paraformer.data.cache import cache_root
from paraformer.data.tokenizer import KINDS, BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_json
from paraformer.errors import DataError
from paraformer.files import WriteError, atomic_write

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class TextCorpus:
    """A tokenized text: token ids per split, and the characters each split's targets cover."""

    name: str
    path: str
    sha256: str
    tokenizer: Tokenizer
    tokens: dict[str, torch.Tensor]  # split -> (n,) int64
    chars: dict[str, int]  # split -> characters of its tokens after the first (what is predicted)

    def num_tokens(self, split: str) -> int:
        return int(self.tokens[split].numel()) if split in self.tokens else 0


def read_text(path: str | Path) -> tuple[str, str]:
    """The text of a UTF-8 file and the sha256 of its bytes; bad files are one-line errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass --data PATH to a UTF-8 text file.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}.") from None
    bom = raw.startswith(b"\xef\xbb\xbf")
    if not raw.removeprefix(b"\xef\xbb\xbf").strip():
        what = "holds only a byte-order mark" if bom and raw.strip() else "is empty (or only whitespace)"
        raise DataError(f"{path} {what}; a language model needs text to learn from.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start} is invalid); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    return text.removeprefix("\ufeff"), hashlib.sha256(raw).hexdigest()


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """First ``1 - val - test`` of the characters for training, then validation, then test."""
    n = len(text)
    n_test = int(n * test_fraction)
    n_val = int(n * val_fraction)
    n_train = n - n_val - n_test
    return {
        "train": text[:n_train],
        "val": text[n_train : n_train + n_val],
        "test": text[n_train + n_val :],
    }


def build_tokenizer(kind: str, train_text: str, full_text: str, vocab_size: int) -> Tokenizer:
    """A char vocabulary of the whole file (so no split has unknown characters), or BPE on train."""
    if kind == "char":
        return CharTokenizer.build(full_text)
    if kind == "bpe":
        return BPETokenizer.train(train_text, vocab_size)
    raise DataError(f"unknown tokenizer {kind!r}; choose one of {KINDS}.")


def load_corpus(
    path: str | Path,
    *,
    tokenizer: str = "char",
    vocab_size: int = 1024,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    given: Tokenizer | None = None,
    log: Log = quiet,
) -> TextCorpus:
    """Read, split and tokenize ``path`` (from the cache when it was done before).

    ``given`` encodes with an existing tokenizer (a run's) instead of building one.
    """
    text, digest = read_text(path)
    settings = {
        "version": FORMAT_VERSION,
        "sha256": digest,
        "tokenizer": given.kind if given else tokenizer,
        "vocab_size": None if given or tokenizer == "char" else vocab_size,
        "given": hashlib.sha256(given.to_json().encode()).hexdigest() if given else None,
        "fractions": [val_fraction, test_fraction],
    }
    key = "text-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    name = Path(path).name
    cached = _load_cached(key, log)
    if cached is not None:
        tok, tokens, chars = cached
        return TextCorpus(name, str(Path(path).resolve()), digest, given or tok, tokens, chars)
    parts = split_text(text, val_fraction, test_fraction)
    tok = given or build_tokenizer(tokenizer, parts["train"], text, vocab_size)
    tokens = {split: torch.from_numpy(tok.encode(part)) for split, part in parts.items() if part}
    tokens = {split: t for split, t in tokens.items() if t.numel()}
    chars = {split: len(tok.decode(t[1:].tolist())) for split, t in tokens.items()}
    _save_cached(key, tok, tokens, chars, log)
    return TextCorpus(name, str(Path(path).resolve()), digest, tok, tokens, chars)


def _load_cached(key: str, log: Log) -> tuple[Tokenizer, dict[str, torch.Tensor], dict[str, int]] | None:
    folder = cache.entry(key)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tok = tokenizer_from_json((folder / "tokenizer.json").read_text())
        tokens = {}
        for split in meta["splits"]:
            array = np.load(folder / f"{split}.npy", allow_pickle=False)
            if array.ndim != 1 or array.size != meta["sizes"][split] or array.max() >= tok.vocab_size:
                raise ValueError(f"{split}.npy does not match meta.json")
            tokens[split] = torch.from_numpy(array.astype(np.int64))
        return tok, tokens, {k: int(v) for k, v in meta["chars"].items()}
    except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
        log(f"note: ignoring damaged token cache {folder} ({exc}); tokenizing again")
        return None


def _save_cached(
    key: str, tok: Tokenizer, tokens: dict[str, torch.Tensor], chars: dict[str, int], log: Log
) -> None:
    root = cache_root()
    if root is None:
        return
    folder = root / key
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # the entry is incomplete until meta is back
        atomic_write(folder / "tokenizer.json", lambda tmp: tmp.write_text(tok.to_json()))
        for split, t in tokens.items():
            array = t.numpy().astype(dtype)
            atomic_write(folder / f"{split}.npy", lambda tmp, a=array: _save_npy(tmp, a))
        meta = {
            "version": FORMAT_VERSION,
            "splits": list(tokens),
            "sizes": {s: int(t.numel()) for s, t in tokens.items()},
            "chars": chars,
        }
        atomic_write(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta)))
    except (OSError, WriteError) as exc:
        log(f"note: cannot write the token cache in {folder} ({exc})")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
