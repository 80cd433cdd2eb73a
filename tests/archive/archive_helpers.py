"""Helpers shared by the archive tests (tiny synthetic slides, table comparisons)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmpath.datasets import default_spec, write_synthetic_slide

N_SLIDES = 20  # 19 good + 1 truncated
CORRUPT = "s_corrupt"
# 512 x 384 px at 2 µm/px: ~17 tiles of 64 px at level 0 each.
CONFIG = {
    "tiling": {"size": 64, "mpp": 2.0, "min_tissue": 0.5},
    "encoders": ["tiny_vit"],
    "engine": {"batch_size": 16, "torch_threads": 1},
    "thumbnails": False,  # drawn and checked in test_cli_run_and_status only (~0.3 s a slide)
}


def make_slide(path: Path, seed: int) -> Path:
    spec = default_spec(512, 384, mpp=2.0, seed=seed, levels=(1, 4))
    return write_synthetic_slide(path, spec, tile_size=128)


def truncate(src: Path, dst: Path, keep: float = 0.4) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def table_bytes(folder: Path, slide_id: str, key: str = "X_tiny_vit") -> bytes:
    import anndata as ad

    return np.ascontiguousarray(
        ad.read_h5ad(folder / "tables" / f"{slide_id}.h5ad").obsm[key]
    ).tobytes()


def assert_same_tables(a: Path, b: Path, slide_ids) -> None:
    """Per-slide tables equal bit for bit: obs, coordinates and every embedding."""
    import anndata as ad

    for sid in slide_ids:
        x = ad.read_h5ad(a / "tables" / f"{sid}.h5ad")
        y = ad.read_h5ad(b / "tables" / f"{sid}.h5ad")
        assert x.obs.equals(y.obs), sid
        assert sorted(x.obsm) == sorted(y.obsm), sid
        for k in x.obsm:
            assert np.asarray(x.obsm[k]).tobytes() == np.asarray(y.obsm[k]).tobytes(), (sid, k)
