"""Fixtures for the data tests: data locations (the tiny tokenizers live in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data folder (``$TETHER_SHARED_DATA`` overrides); skips when absent."""
    override = os.environ.get("TETHER_SHARED_DATA")
    folder = Path(override) if override else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} not found (set TETHER_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Small slices of the real data, kept in the repository."""
    return Path(__file__).resolve().parent / "fixtures"
