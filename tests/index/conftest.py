"""Fixtures for the index tests: clustered synthetic tile tables and a tiny aligned encoder."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from mmpath import _keys as K
from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding, Tokens

REP = "X_toy"
ENCODER = "toy_encoder"


def clustered(n: int, dim: int, n_clusters: int, *, seed: int = 0, spread: float = 0.35):
    """Gaussian-mixture vectors (as real embeddings are clustered) and their cluster labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(np.float32), labels


def make_table(
    n_slides: int = 4,
    per_slide: int = 100,
    dim: int = 16,
    *,
    seed: int = 0,
    n_clusters: int = 8,
    prefix: str = "S",
    rep: str = REP,
    encoder: str | None = ENCODER,
) -> ad.AnnData:
    """A cohort tile table with clustered embeddings, a grid of positions and labels."""
    n = n_slides * per_slide
    x, labels = clustered(n, dim, n_clusters, seed=seed)
    sids = np.repeat([f"{prefix}{i}" for i in range(n_slides)], per_slide)
    side = int(np.ceil(np.sqrt(per_slide)))
    j = np.tile(np.arange(per_slide), n_slides)
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(sids),
            K.X: (j % side) * 224,
            K.Y: (j // side) * 224,
            K.TISSUE_FRAC: 1.0,
            "cluster": labels.astype(str),
            "organ": np.where(np.arange(n_slides).repeat(per_slide) % 2 == 0, "colon", "lung"),
        },
        index=[K.obs_name(s, i) for s, i in zip(sids, j, strict=False)],
    )
    t = ad.AnnData(obs=obs)
    t.obsm[rep] = x
    slides = {
        f"{prefix}{i}": {
            "path": None,
            "mpp": 0.5,
            "tiling": {
                "size": 224,
                "size0": 224,
                "level": 0,
                "read_size": 224,
                "mpp_effective": 0.5,
            },
        }
        for i in range(n_slides)
    }
    t.uns[K.UNS] = {K.UNS_VERSION: "test", K.UNS_SLIDES: slides}
    if encoder is not None:
        t.uns[K.UNS][K.UNS_EMBEDDINGS] = {rep: {"encoder": encoder, "proj_key": None}}
    return t


@pytest.fixture()
def table():
    return make_table()


@pytest.fixture()
def big_table():
    """3,000 clustered 32-d vectors over 6 slides (for approximate-search recall)."""
    return make_table(6, 500, 32, n_clusters=30, seed=1)


@pytest.fixture()
def make():
    """The table factory, for tests that need several tables."""
    return make_table


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """One OpenMP thread: on a shared 2-core box faiss' thread barriers cost 10-30x."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0)}
WORDS = list(COLOURS)


class ColourCLIP(Encoder):
    """Image: mean RGB (un-normalised back to [0, 1]); text: the colour word's RGB."""

    def __init__(self, name: str = "colour_clip") -> None:
        super().__init__()
        self.info = EncoderInfo(
            name=name,
            kind="image-text",
            embed_dim=3,
            proj_dim=3,
            slug=name,
            data=DataConfig(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), mpp=None),
        )
        self.register_buffer("table", torch.tensor([COLOURS[w] for w in WORDS]))

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        assert x.shape[-1] == 16  # preprocessed to input_size
        rgb = x.mean(dim=(2, 3)) * 0.25 + 0.5
        return ImageEmbedding(rgb, torch.nn.functional.normalize(rgb - 0.3, dim=-1))

    def tokenize(self, texts) -> Tokens:
        word = [next(w for w in t.split() if w in WORDS) for t in texts]
        return Tokens(torch.tensor([[WORDS.index(w)] for w in word]))

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return torch.nn.functional.normalize(self.table[tokens.input_ids[:, 0]] - 0.3, dim=-1)


@pytest.fixture()
def colour_clip():
    """The ColourCLIP class (call it with a name to get an encoder)."""
    return ColourCLIP
