"""Test-wide settings: the suite never reads or writes the user's paraformer cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache folder for the whole session (decoded data is reused across tests), not ~/.cache."""
    before = os.environ.get("PARAFORMER_CACHE_DIR")
    os.environ["PARAFORMER_CACHE_DIR"] = str(tmp_path_factory.mktemp("paraformer-cache"))
    yield
    if before is None:
        os.environ.pop("PARAFORMER_CACHE_DIR", None)
    else:
        os.environ["PARAFORMER_CACHE_DIR"] = before
