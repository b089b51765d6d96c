"""Shared fixtures: real LFW faces from ../shared/data when present, the demo source otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from degrade.engine import to_float

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFW = SHARED_DATA / "lfw112"


@pytest.fixture(scope="session")
def lfw_source():
    if not (LFW / "images").is_dir():
        pytest.skip(f"real faces not found at {LFW} (the shared data folder beside the checkout)")
    from degrade.sources.folder import FolderSource

    return FolderSource(LFW)


@pytest.fixture(scope="session")
def faces(lfw_source) -> torch.Tensor:
    """64 real aligned faces spread over many identities, (64, 3, 112, 112) float in [0, 1]."""
    keys = torch.arange(0, 64 * 97, 97, dtype=torch.int64)
    return to_float(lfw_source.load(keys).hq)


@pytest.fixture
def flat_grey() -> torch.Tensor:
    """(8, 3, 112, 112) of 0.5 everywhere."""
    return torch.full((8, 3, 112, 112), 0.5)
