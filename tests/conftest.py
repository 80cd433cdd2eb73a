"""Shared fixtures: synthetic slides with known geometry, the bundled sample, real test data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from mmpath.datasets import default_spec, write_synthetic_slide

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        pass
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The real test data fetched by tools/fetch_test_data (``make testdata``)."""
    root = Path(os.environ.get("MMPATH_TESTDATA", "~/.cache/mmpath/testdata")).expanduser()
    if not (root / "minilm" / ".complete").exists():
        pytest.fail(f"real test data missing in {root}: run `make testdata` (or `make test`)")
    return root


@pytest.fixture(scope="session")
def synthetic_spec():
    """A 2048x1536 slide at 0.5 µm/px, levels 1/4/16, two tissue regions + pen + dark mark."""
    return default_spec(2048, 1536, mpp=0.5, levels=(1, 4, 16), artefacts=True)


@pytest.fixture(scope="session")
def synthetic_slide_path(tmp_path_factory, synthetic_spec) -> Path:
    path = tmp_path_factory.mktemp("slides") / "synthetic slide é.tif"  # unicode + space
    return write_synthetic_slide(path, synthetic_spec, tile_size=256)


@pytest.fixture()
def synthetic_slide(synthetic_slide_path):
    from mmpath.io import open_slide

    with open_slide(synthetic_slide_path) as s:
        yield s


@pytest.fixture()
def sample_slide():
    from mmpath.datasets import sample_slide

    with sample_slide() as s:
        yield s
