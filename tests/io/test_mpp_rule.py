"""The one mpp plausibility rule (mmpath/io/_mpp.py) through info, tile, embed and segment.

A slide tagged 896 µm/px (a resolution tag in the wrong unit) must never be tiled or measured
at that scale: its metadata mpp is ignored with a warning, and every command then refuses it
with a message naming the CLI flag in the CLI and the argument in the API.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

import mmpath as mm
from mmpath._settings import cli_surface, spell
from mmpath.cli import main
from mmpath.errors import DataError, SlideError
from mmpath.io._mpp import MPP_RANGE, check_mpp


@pytest.fixture(scope="module")
def tagged_896(tmp_path_factory):
    """A 1024 px synthetic H&E tile pyramid (truly 0.5 µm/px) whose TIFF tags say 896 µm/px."""
    from mmpath.datasets import default_spec, render

    arr = render(default_spec(1024, 1024, mpp=0.5, levels=(1,), seed=0), (0, 0), (1024, 1024))
    path = tmp_path_factory.mktemp("mpp") / "tag896.tif"
    tifffile.imwrite(
        path,
        arr,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(1e4 / 896, 1e4 / 896),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return path


def test_check_mpp_is_the_one_rule():
    assert check_mpp(None, what="x") is None
    assert check_mpp(0.25, what="x") == 0.25
    for bad in (896.0, 0.001, -1.0, float("nan"), "abc"):
        with pytest.raises(SlideError, match="mpp"):
            check_mpp(bad, what="slide 'a'")
    # a tile/mask may be coarser than any slide, but not absurd
    assert check_mpp(64.0, what="x", target=True) == 64.0
    with pytest.raises(SlideError, match="tile resolution"):
        check_mpp(MPP_RANGE[1] * 100, what="x", target=True)


def test_messages_name_the_flag_in_the_cli_and_the_argument_in_the_api():
    assert spell("mpp=", "--slide-mpp") == "mpp="
    with cli_surface():
        assert spell("mpp=", "--slide-mpp") == "--slide-mpp"
        with pytest.raises(SlideError, match="--mask-mpp 100000 "):
            check_mpp(1e5, what="x", api="mask_mpp=", cli="--mask-mpp", target=True)
    with pytest.raises(SlideError, match="mask_mpp 100000 "):
        check_mpp(1e5, what="x", api="mask_mpp=", cli="--mask-mpp", target=True)


def test_896_metadata_is_ignored_and_tiling_refuses_it_in_api_and_cli(tagged_896, tmp_path, caplog):
    with mm.io.open_slide(tagged_896) as slide:
        assert slide.mpp is None  # not 896
        with pytest.raises(SlideError, match=r"no mpp metadata .*mpp= \(e.g. open_slide"):
            mm.pp.tile(slide, 128, mpp=0.5)
    assert "ignoring implausible mpp 896" in caplog.text
    rc = main(["-q", "tile", str(tagged_896), "-o", str(tmp_path / "t"), "--mpp", "0.5"])
    assert rc == 2
    # an explicit implausible value is refused, naming the flag
    rc = main(["tile", str(tagged_896), "-o", str(tmp_path / "t"), "--slide-mpp", "896"])
    assert rc == 2


def test_896_cli_messages(tagged_896, tmp_path, capsys):
    main(["-q", "tile", str(tagged_896), "-o", str(tmp_path / "t"), "--mpp", "0.5"])
    err = capsys.readouterr().err
    assert "--slide-mpp" in err and "--estimate-mpp" in err and "mpp=" not in err
    main(["-q", "tile", str(tagged_896), "-o", str(tmp_path / "t"), "--slide-mpp", "896"])
    err = capsys.readouterr().err
    assert "--slide-mpp 896 µm/px is not a plausible slide resolution" in err


def test_896_info_warns_and_shows_the_estimate(tagged_896, capsys):
    assert main(["info", str(tagged_896)]) == 0
    cap = capsys.readouterr()
    assert "mpp unknown" in cap.out
    est_line = next(ln for ln in cap.out.splitlines() if ln.strip().startswith("estimate"))
    est = float(est_line.split()[1])
    assert 0.375 <= est <= 0.625  # truly 0.5 µm/px
    assert "no plausible mpp in the metadata" in cap.err and "--estimate-mpp" in cap.err


def test_info_warns_when_metadata_and_estimate_disagree(tmp_path, capsys):
    """Tagged 0.25 (a '40x' tag on a 20x scan): the nuclei say ~0.5, a 2x disagreement."""
    from mmpath.datasets import default_spec, render

    arr = render(default_spec(1024, 1024, mpp=0.5, levels=(1,), seed=1), (0, 0), (1024, 1024))
    path = tmp_path / "wrong40x.tif"
    tifffile.imwrite(
        path,
        arr,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    assert main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert "differ 2." in err and "> 1.5x" in err and "--slide-mpp" in err


def test_tile_with_estimate_mpp_uses_and_records_the_estimate(tagged_896, tmp_path):
    out = tmp_path / "t"
    args = ["-q", "tile", str(tagged_896), "-o", str(out), "--size", "128", "--estimate-mpp"]
    assert main([*args, "--mpp", "0.5", "--no-thumbnail"]) == 0
    table = mm.io.read_h5ad(out / "tag896.h5ad")
    rec = table.uns["mmpath"]["slides"]["tag896"]
    assert rec["mpp_source"] == "estimate"
    assert rec["mpp"] == pytest.approx(0.5, rel=0.25)
    assert rec["mpp_estimate"]["n_nuclei"] >= 30
    # the reader reopens the slide at the recorded (estimated) mpp
    batch = mm.io.read_tiles(None, table[:2])
    assert batch.shape == (2, 128, 128, 3)


class _Dark(nn.Module):
    n_prob_classes = 2

    def predict_proba(self, x):
        p = torch.sigmoid(60 * (0.55 - x.mean(1, keepdim=True)))
        return torch.cat([1 - p, p], 1)


def test_segment_refuses_a_mask_mpp_on_an_896_slide(tagged_896):
    from mmpath.models.heads import TrainedHead

    head = TrainedHead("seg", _Dark(), ("background", "dark"), tile_size=64)
    with mm.io.open_slide(tagged_896) as slide:
        with pytest.raises(SlideError, match=r"no mpp metadata .*mpp="):
            mm.tl.segment_slide(slide, head, mask_mpp=4.0)
        with cli_surface(), pytest.raises(SlideError, match="--slide-mpp"):
            mm.tl.segment_slide(slide, head, mask_mpp=4.0)
        with pytest.raises(DataError, match="mask_mpp 1e\\+06 "):
            mm.tl.segment_slide(slide, head, mask_mpp=1e6)


def test_embed_refuses_a_table_tiled_without_mpp(tmp_path, capsys):
    from PIL import Image

    from mmpath.datasets import default_spec, render

    arr = render(default_spec(512, 512, mpp=0.5, levels=(1,), seed=2), (0, 0), (512, 512))
    png = tmp_path / "nompp.png"
    Image.fromarray(arr).save(png)
    slide = mm.io.open_slide(png)
    tiles = mm.pp.tile(slide, 128, min_tissue=0.1)  # native level: the API allows it
    assert tiles.n_obs > 0
    mm.io.write_h5ad(tiles, tmp_path / "nompp.h5ad")
    rc = main(["-q", "embed", str(tmp_path / "nompp.h5ad"), "--encoder", "tiny_vit"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tiled without a known mpp" in err and "--slide-mpp" in err
    rc = main(
        ["-q", "embed", str(tmp_path / "nompp.h5ad"), "--encoder", "tiny_vit"]
        + [
            "--slide-mpp",
            "0.5",
            "--num-workers",
            "0",
        ]
    )
    assert rc == 0
    done = mm.io.read_h5ad(tmp_path / "nompp.h5ad")
    t = done.uns["mmpath"]["slides"]["nompp"]["tiling"]
    assert t["mpp_effective"] == pytest.approx(0.5)
    assert np.isfinite(done.obsm["X_tiny_vit"]).all()


def test_index_message_names_the_cli_command(tmp_path):
    from mmpath.errors import IndexError_

    with pytest.raises(IndexError_, match=r"made by mm\.index\.build"):
        mm.index.load(tmp_path / "nothing")
    with cli_surface(), pytest.raises(IndexError_, match="mmpath index build"):
        mm.index.load(tmp_path / "nothing")
