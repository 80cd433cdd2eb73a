"""tl.embed(stain=...) and `mmpath embed --stain macenko --stain-target ref.png`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmpath as mm
from mmpath.cli import main


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("stain")
    with mm.datasets.sample_slide() as s:
        tiles = mm.pp.tile(s, 112, mpp=1.0, min_tissue=0.6)[:6]
        ref = s.read_region((1000, 1500), 0, (512, 512))
    # the reference in another lab's colours: bluer, paler
    ref = np.clip(ref.astype(np.float32) * (0.85, 0.9, 1.05), 0, 255).astype(np.uint8)
    Image.fromarray(ref).save(root / "ref.png")
    mm.io.write_h5ad(tiles, root / "t.h5ad")
    return root


def test_embed_with_stain_target_records_it_and_changes_inputs(table):
    enc = mm.models.create_encoder("tiny_vit")
    target = mm.pp.fit_stain_target(table / "ref.png", method="macenko")
    plain = mm.io.read_h5ad(table / "t.h5ad")
    normed = mm.io.read_h5ad(table / "t.h5ad")
    mm.tl.embed(plain, enc, num_workers=0)
    mm.tl.embed(normed, enc, num_workers=0, stain=target)
    rec = normed.uns["mmpath"]["embeddings"]["X_tiny_vit"]
    assert rec["stain"]["method"] == "macenko"
    np.testing.assert_allclose(
        rec["stain"]["params"]["stain_matrix"], target.params["stain_matrix"]
    )
    (sid,) = rec["preprocess"]
    assert rec["preprocess"][sid]["stain_source"]["method"] == "macenko"
    assert plain.uns["mmpath"]["embeddings"]["X_tiny_vit"]["stain"] is None
    diff = np.abs(plain.obsm["X_tiny_vit"] - normed.obsm["X_tiny_vit"]).max()
    assert diff > 1e-3  # the model saw other pixels
    # the recorded target rebuilds the same normaliser for inference
    again = mm.io.read_h5ad(table / "t.h5ad")
    mm.tl.embed(again, enc, num_workers=0, stain=rec["stain"])
    np.testing.assert_allclose(again.obsm["X_tiny_vit"], normed.obsm["X_tiny_vit"], atol=1e-5)


def test_cli_embed_stain(table, tmp_path, capsys):
    t = table / "t.h5ad"
    argv = ["-q", "embed", str(t), "--encoder", "tiny_vit", "--num-workers", "0"]
    assert main([*argv, "--stain", "macenko", "--stain-target", str(table / "ref.png")]) == 0
    rec = mm.io.read_h5ad(t).uns["mmpath"]["embeddings"]["X_tiny_vit"]
    assert rec["stain"]["source"].endswith("ref.png")
    white = tmp_path / "white.png"
    Image.fromarray(np.full((256, 256, 3), 250, np.uint8)).save(white)
    capsys.readouterr()
    assert main([*argv, "--stain", "macenko", "--stain-target", str(white)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no stained tissue" in err[0]
    assert main([*argv, "--stain", "reinhard"]) == 2
    assert "needs --stain-target" in capsys.readouterr().err
