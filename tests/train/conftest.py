"""Fixtures of the training tests: synthetic caption sets and one-thread torch.

Tests pin torch to one intra-op thread: on a shared 2-core machine OpenMP threads that
spin against other processes make tiny models several times slower, and one thread keeps
float reductions in the same order run after run.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def caption_sets(tmp_path_factory):
    """(train.csv, val.csv): 270 / 90 synthetic textures whose captions name their class."""
    from mmpath.train.synthetic import write_caption_set

    root = tmp_path_factory.mktemp("captions")
    train = write_caption_set(root / "train", 270, size=48, seed=0)
    val = write_caption_set(root / "val", 90, size=48, seed=1)
    return train, val
