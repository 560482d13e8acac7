"""Shared fixtures: the committed glm-tiny model and freshly exported checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.model.runtime import Model, load_model

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "glm-tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_model() -> Iterator[Model]:
    with load_model(TINY, threads=1) as model:
        yield model
