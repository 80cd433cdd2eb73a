"""tl.embed / embed_slide / embed_text / aggregate on tiny encoders and synthetic slides."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError, ModelError, TileReadError
from mmpath.io.slide import ArraySlide
from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding, Tokens
from mmpath.tl._embed_data import plan_preprocess


class ToyEncoder(Encoder):
    """A deterministic conv encoder with an optional text tower; can fail on purpose."""

    def __init__(self, *, input_size=16, mpp=None, text=True, fail_after=None, record=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 6)
        self.words = nn.EmbeddingBag(64, 6, mode="mean")
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.info = EncoderInfo(
            name="toy/enc",
            kind="image-text" if text else "image",
            embed_dim=8,
            proj_dim=6 if text else None,
            slug="toy",
            data=DataConfig(input_size=input_size, mpp=mpp, interpolation="bilinear"),
        )
        self.calls, self.fail_after, self.record, self.seen = 0, fail_after, record, []

    def encode_image(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        if self.record:
            self.seen.append(x.clone())
        f = self.conv(x).mean((2, 3))
        proj = F.normalize(self.head(f), dim=-1) if self.info.has_text else None
        return ImageEmbedding(f, proj)

    def tokenize(self, texts):
        if not self.info.has_text:
            return super().tokenize(texts)
        n = max(len(t) for t in texts)
        ids = torch.tensor([[ord(c) % 63 + 1 for c in t] + [0] * (n - len(t)) for t in texts])
        return Tokens(ids, (ids > 0).long())

    def encode_text(self, tokens):
        if not self.info.has_text:
            return super().encode_text(tokens)
        return F.normalize(self.words(tokens.input_ids) * 3.0, dim=-1)


@pytest.fixture(scope="module")
def synth_tiles(synthetic_slide_path):
    with mm.io.open_slide(synthetic_slide_path, slide_id="synth") as s:
        return mm.pp.tile(s, 32, mpp=4.0, min_tissue=0.3)


@pytest.fixture(scope="module")
def sample_tiles():
    with mm.datasets.sample_slide() as s:
        return mm.pp.tile(s, 32, mpp=4.0, min_tissue=0.3)


@pytest.fixture(scope="module")
def cohort(synth_tiles, sample_tiles):
    return mm.io.concat([synth_tiles, sample_tiles])


def test_tables_are_small_enough(synth_tiles, sample_tiles):
    assert 10 <= synth_tiles.n_obs <= 80 and 10 <= sample_tiles.n_obs <= 200


def test_embed_writes_obsm_and_provenance(synth_tiles, tmp_path):
    t = synth_tiles.copy()
    assert mm.tl.embed(t, ToyEncoder(mpp=0.5), batch_size=8, num_workers=0) is None
    assert t.obsm["X_toy"].shape == (t.n_obs, 8) and t.obsm["X_toy"].dtype == np.float32
    proj = t.obsm["X_toy_proj"]
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), 1.0, rtol=1e-5)
    assert t.obs[K.TILE_OK].all()
    rec = t.uns[K.UNS][K.UNS_EMBEDDINGS]["X_toy"]
    assert rec["encoder"] == "toy/enc" and rec["embed_dim"] == 8 and rec["proj_dim"] == 6
    assert rec["proj_key"] == "X_toy_proj" and rec["mmpath_version"] == mm.__version__
    assert rec["data"]["input_size"] == 16 and rec["data"]["mpp"] == 0.5
    json.dumps(rec)  # JSON-able
    # tiles at 4 µm/px, encoder at 0.5: 32 px -> 256 px, centre crop 16
    assert rec["preprocess"]["synth"] == {"tile_size": 32, "resize_to": 256, "crop_to": 16}
    mm.io.write_h5ad(t, tmp_path / "t.h5ad")
    back = mm.io.read_h5ad(tmp_path / "t.h5ad")
    np.testing.assert_array_equal(back.obsm["X_toy"], t.obsm["X_toy"])
    assert back.uns[K.UNS][K.UNS_EMBEDDINGS]["X_toy"]["encoder"] == "toy/enc"


def test_key_added_and_image_only(synth_tiles):
    t = synth_tiles.copy()
    mm.tl.embed(t, ToyEncoder(text=False), key_added="X_mine", num_workers=0)
    assert "X_mine" in t.obsm and "X_mine_proj" not in t.obsm and "X_toy" not in t.obsm
    with pytest.raises(DataError, match="valid h5ad key"):
        mm.tl.embed(t, ToyEncoder(), key_added="X/bad", num_workers=0)


def test_same_result_twice_and_across_workers(synth_tiles):
    runs = []
    for workers in (0, 0, 1):
        t = synth_tiles.copy()
        mm.tl.embed(t, ToyEncoder(), batch_size=8, num_workers=workers)
        runs.append(t.obsm["X_toy"])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert np.ptp(runs[0], axis=0).max() > 1e-3  # tiles differ: not a constant output


def test_cohort_equals_per_slide(cohort, synth_tiles, sample_tiles):
    t = cohort.copy()
    mm.tl.embed(t, ToyEncoder(), batch_size=8, num_workers=0)
    for part in (synth_tiles, sample_tiles):
        res = mm.tl.embed_slide(part, ToyEncoder(), batch_size=8)
        np.testing.assert_array_equal(t[part.obs_names].obsm["X_toy"], res.features)
        np.testing.assert_array_equal(t[part.obs_names].obsm["X_toy_proj"], res.proj)
        assert res.ok.all()
    slides = mm.tl.aggregate(t)
    assert list(slides.obs_names) == ["synth", "CMU-1-Small-Region"]
    assert slides.obs[K.N_TILES].tolist() == [synth_tiles.n_obs, sample_tiles.n_obs]
    np.testing.assert_allclose(
        slides.X[0], t[synth_tiles.obs_names].obsm["X_toy"].mean(0), rtol=1e-5
    )
    np.testing.assert_array_equal(slides.obsm["X_toy"], slides.X)
    assert slides.uns[K.UNS][K.UNS_EMBEDDINGS]["X_toy"]["encoder"] == "toy/enc"
    assert set(slides.uns[K.UNS][K.UNS_SLIDES]) == {"synth", "CMU-1-Small-Region"}


def test_resume_after_interruption_is_identical(cohort, tmp_path):
    ref = cohort.copy()
    mm.tl.embed(ref, ToyEncoder(), batch_size=4, chunk_size=8, num_workers=0)
    ckpt = tmp_path / "ckpt"
    t = cohort.copy()
    with pytest.raises(RuntimeError, match="simulated crash"):
        mm.tl.embed(
            t, ToyEncoder(fail_after=7), batch_size=4, chunk_size=8, num_workers=0, checkpoint=ckpt
        )
    assert "X_toy" not in t.obsm  # nothing half-written into the table
    sizes = [int((cohort.obs[K.SLIDE_ID] == s).sum()) for s in ("synth", "CMU-1-Small-Region")]
    chunk_batches = [-(-min(8, n - a) // 4) for n in sizes for a in range(0, n, 8)]
    done = np.flatnonzero(np.cumsum(chunk_batches) <= 7)  # chunks finished before the crash
    assert len(list(ckpt.glob("*.npz"))) == len(done) >= 2
    enc = ToyEncoder()
    mm.tl.embed(t, enc, batch_size=4, chunk_size=8, num_workers=0, checkpoint=ckpt)
    assert enc.calls == sum(chunk_batches) - sum(chunk_batches[i] for i in done)
    np.testing.assert_array_equal(t.obsm["X_toy"], ref.obsm["X_toy"])
    np.testing.assert_array_equal(t.obsm["X_toy_proj"], ref.obsm["X_toy_proj"])
    # other weights never reuse these chunks
    other = ToyEncoder()
    other.conv.bias.data += 1
    mm.tl.embed(cohort.copy(), other, batch_size=4, chunk_size=8, num_workers=0, checkpoint=ckpt)
    assert other.calls == sum(chunk_batches)
    # nor does a different run (other batch size)
    enc2 = ToyEncoder()
    mm.tl.embed(cohort.copy(), enc2, batch_size=8, chunk_size=8, num_workers=0, checkpoint=ckpt)
    assert enc2.calls == sum(-(-n // 8) for n in cohort.obs[K.SLIDE_ID].value_counts())


def test_plan_preprocess():
    d = DataConfig(input_size=224, mpp=0.5)
    p = plan_preprocess(224, 0.5, d)
    assert (p.resize_to, p.crop_to) == (None, None)
    p = plan_preprocess(224, 0.51, d)  # within tolerance: untouched
    assert (p.resize_to, p.crop_to) == (None, None)
    p = plan_preprocess(256, 0.5, d)  # same magnification, larger: crop
    assert (p.resize_to, p.crop_to) == (None, 224)
    p = plan_preprocess(448, 0.25, d)  # 40x tiles for a 20x model: exact downsample
    assert (p.resize_to, p.crop_to) == (224, None)
    p = plan_preprocess(512, 0.25, d)
    assert (p.resize_to, p.crop_to) == (256, 224)
    p = plan_preprocess(224, 0.5, DataConfig(input_size=112, mpp=None))  # unknown: resize
    assert (p.resize_to, p.crop_to) == (112, None)
    p = plan_preprocess(64, 0.5, DataConfig(input_size=224, mpp=0.5))  # too small: upsample
    assert (p.resize_to, p.crop_to) == (224, None)


def _stripes(period_px: int, size: int = 256) -> np.ndarray:
    x = np.arange(size)
    row = np.where((x // (period_px // 2)) % 2 == 0, 60, 220).astype(np.uint8)
    img = np.repeat(np.repeat(row[None, :, None], size, 0), 3, 2)
    return img


def _cycles(x: torch.Tensor) -> int:
    prof = x[0, 0].mean(0).numpy()
    spec = np.abs(np.fft.rfft(prof - prof.mean()))
    return int(np.argmax(spec))


def test_tiles_reach_the_encoder_at_its_mpp():
    # stripes with a 16 px period at 0.5 µm/px = 8 µm
    slide = ArraySlide(_stripes(16), mpp=0.5, slide_id="stripes")
    tiles = mm.pp.tile(slide, 128, mpp=0.5, min_tissue=0)
    enc = ToyEncoder(input_size=32, mpp=1.0, record=True)  # 8 µm = 8 px at 1 µm/px
    mm.tl.embed(tiles, enc, slide=slide, num_workers=0)
    assert enc.seen[0].shape[-2:] == (32, 32)
    assert _cycles(enc.seen[0]) == 4  # 32 px / 8 px
    plain = ToyEncoder(input_size=32, mpp=None, record=True)  # mpp unknown: plain resize
    mm.tl.embed(tiles, plain, slide=slide, num_workers=0)
    assert _cycles(plain.seen[0]) == 8  # 128 px of 16 px stripes squeezed into 32 px


class _DamagedSlide(ArraySlide):
    def _read(self, x, y, level, w, h):
        if x == 64 and y == 0:
            raise TileReadError("corrupt JPEG tile")
        return super()._read(x, y, level, w, h)


@pytest.mark.parametrize("workers", [0, 1])
def test_damaged_tiles_are_marked(workers):
    rng = np.random.default_rng(0)
    slide = _DamagedSlide(
        rng.integers(0, 255, (64, 192, 3), dtype=np.uint8), mpp=0.5, slide_id="dmg"
    )
    tiles = mm.pp.tile(slide, 64, min_tissue=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm.tl.embed(tiles, ToyEncoder(input_size=64), slide=slide, num_workers=workers)
    assert tiles.obs[K.TILE_OK].tolist() == [True, False, True]
    assert tiles.uns[K.UNS][K.UNS_EMBEDDINGS]["X_toy"]["n_failed"] == 1
    slides = mm.tl.aggregate(tiles)
    assert slides.obs[K.N_TILES].tolist() == [2]


def test_embed_text():
    enc = ToyEncoder()
    txt = mm.tl.embed_text(["tumor epithelium", "stroma", "tumor epithelium"], enc)
    assert txt.shape == (3, 6) and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(txt[0], txt[2])
    assert not np.allclose(txt[0], txt[1])
    assert mm.tl.embed_text([], enc).shape == (0, 6)


def test_clear_errors(synth_tiles):
    with pytest.raises(ModelError, match="no text tower"):
        mm.tl.embed_text(["stroma"], ToyEncoder(text=False))
    with pytest.raises(ModelError):
        mm.tl.embed(synth_tiles.copy(), "no_such_encoder_xyz")
    bare = synth_tiles.copy()
    del bare.uns[K.UNS]
    with pytest.raises(DataError, match="no provenance"):
        mm.tl.embed(bare, ToyEncoder())
    with pytest.raises(DataError, match="several slides"):
        mm.tl.embed(
            mm.io.concat([synth_tiles, _renamed(synth_tiles)]),
            ToyEncoder(),
            slide=ArraySlide(np.zeros((8, 8, 3), np.uint8)),
        )
    with pytest.raises(DataError, match="run mm.tl.embed"):
        mm.tl.aggregate(synth_tiles.copy())
    with pytest.raises(ModelError):
        mm.tl.embed(synth_tiles.copy(), 42)


def _renamed(tiles):
    t = tiles.copy()
    rec = t.uns[K.UNS][K.UNS_SLIDES].pop("synth")
    t.uns[K.UNS][K.UNS_SLIDES]["synth2"] = rec
    t.obs[K.SLIDE_ID] = "synth2"
    t.obs[K.SLIDE_ID] = t.obs[K.SLIDE_ID].astype("category")
    t.obs_names = [K.obs_name("synth2", i) for i in range(t.n_obs)]
    return t


def test_registry_tiny_entries(synth_tiles):
    t = synth_tiles[:12].copy()
    mm.tl.embed(t, "tiny_clip", batch_size=8, num_workers=0)
    assert t.obsm["X_tiny_clip"].shape == (12, 64)
    np.testing.assert_allclose(np.linalg.norm(t.obsm["X_tiny_clip_proj"], axis=1), 1, rtol=1e-5)
    txt = mm.tl.embed_text(["tumor", "stroma"], "tiny_clip")
    assert txt.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    assert mm.tl.embed_text(["tumor"], "tiny_text").shape[0] == 1
    with pytest.raises(ModelError, match="no text tower"):
        mm.tl.embed_text(["tumor"], "tiny_vit")
    with pytest.raises(ModelError, match="no image tower"):
        mm.tl.embed(t, "tiny_text")


def test_cli_embed_resumes_and_skips(synth_tiles, tmp_path, capsys):
    from mmpath.cli import main

    paths = []
    for i, part in enumerate((synth_tiles[:6], synth_tiles[6:10])):
        paths.append(tmp_path / f"t{i}.h5ad")
        mm.io.write_h5ad(part.copy(), paths[-1])
    args = [
        "embed",
        *map(str, paths),
        "--encoder",
        "tiny_vit",
        "--num-workers",
        "0",
        "--batch-size",
        "4",
        "--chunk-size",
        "4",
        "-q",
    ]
    torch.manual_seed(0)
    assert main(["-q", *args[:-1]]) == 0
    first = [mm.io.read_h5ad(p).obsm["X_tiny_vit"] for p in paths]
    assert [f.shape for f in first] == [(6, 64), (4, 64)]
    assert not list(tmp_path.glob("*.partial"))  # checkpoints removed once written
    assert "embedded 2/2" in capsys.readouterr().out
    assert main(["-q", *args[:-1]]) == 0
    assert "2 already done" in capsys.readouterr().out
    torch.manual_seed(0)  # tiny_vit is random: the same seed gives the same model
    assert main(["-q", *args[:-1], "--overwrite"]) == 0
    np.testing.assert_array_equal(mm.io.read_h5ad(paths[0]).obsm["X_tiny_vit"], first[0])
    assert main(["embed", str(paths[0]), "--encoder", "nope_xyz"]) == 2
    assert main(["embed", str(paths[0]), "--encoder", "tiny_vit", "--remap", "bad"]) == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_moved_or_in_memory_slide_is_one_clear_line(tmp_path, workers):
    """A slide moved since tiling (or an in-memory one) fails before any worker starts, in one
    line that names the fix, not wrapped in a DataLoader worker's traceback."""
    from PIL import Image

    from mmpath.errors import SlideError

    rgb = np.full((128, 128, 3), 240, np.uint8)
    rgb[16:112, 16:112] = (180, 80, 160)
    Image.fromarray(rgb).save(tmp_path / "s.png")
    tiles = mm.pp.tile(mm.io.open_slide(tmp_path / "s.png", mpp=1.0), 32, min_tissue=0.0)
    (tmp_path / "s.png").rename(tmp_path / "moved.png")
    with pytest.raises(SlideError, match=r"does not exist; if the slides moved, pass remap=") as e:
        mm.tl.embed(tiles.copy(), ToyEncoder(), num_workers=workers)
    assert "\n" not in str(e.value)
    mem = mm.pp.tile(ArraySlide(rgb, mpp=1.0, slide_id="mem"), 32, min_tissue=0.0)
    with pytest.raises(DataError, match="in-memory image") as e:
        mm.tl.embed(mem, ToyEncoder(), num_workers=workers)
    assert "\n" not in str(e.value)


def test_worker_errors_are_unwrapped():
    from mmpath.errors import SlideError
    from mmpath.tl._embed_data import worker_errors_unwrapped

    wrapped = SlideError(
        "Caught SlideError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1\nmmpath.errors.SlideError: slide gone; fix it\n'
    )
    with pytest.raises(SlideError) as e, worker_errors_unwrapped():
        raise wrapped
    assert str(e.value) == "slide gone; fix it"


def _crash_then_count(tiles, ckpt, changed):
    """Crash an embed run part-way, apply ``changed`` to a copy of the table, rerun: the
    number of model calls of the rerun and its result."""
    t = tiles.copy()
    with pytest.raises(RuntimeError, match="simulated crash"):
        mm.tl.embed(
            t, ToyEncoder(fail_after=3), batch_size=4, chunk_size=8, num_workers=0, checkpoint=ckpt
        )
    assert len(list(ckpt.glob("*.npz"))) >= 1
    t2 = tiles.copy()
    changed(t2)
    enc = ToyEncoder()
    mm.tl.embed(t2, enc, batch_size=4, chunk_size=8, num_workers=0, checkpoint=ckpt)
    return enc.calls, t2


@pytest.mark.parametrize("what", ["xy", "tile_size", "level", "slide_file"])
def test_stale_checkpoint_is_discarded_when_the_pixels_change(
    synth_tiles, synthetic_slide_path, tmp_path, caplog, what
):
    """Issue 10 item 3: same obs_names but other positions (or other tiling / slide file)
    never resume from chunks of the old pixels."""
    import os

    def change(t):
        if what == "xy":  # the exact scenario of the issue: same rows, other x/y
            t.obs[K.X] = t.obs[K.X].to_numpy() + 32
            t.obs[K.Y] = t.obs[K.Y].to_numpy() + 16
        elif what == "slide_file":
            st = os.stat(synthetic_slide_path)
            os.utime(synthetic_slide_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        else:
            spec = t.uns[K.UNS][K.UNS_SLIDES]["synth"][K.UNS_TILING]
            spec["read_size" if what == "tile_size" else "level"] -= 1

    n_batches = -(-synth_tiles.n_obs // 4)
    with caplog.at_level("WARNING"):
        calls, t2 = _crash_then_count(synth_tiles, tmp_path / "ckpt", change)
    assert calls == n_batches  # nothing resumed
    notes = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    assert len(notes) == 1 and "pixels" in notes[0] and "\n" not in notes[0]
    if what == "xy":  # and the result is that of a fresh run on the new positions
        ref = t2.copy()
        del ref.obsm["X_toy"]
        mm.tl.embed(ref, ToyEncoder(), batch_size=4, chunk_size=8, num_workers=0)
        np.testing.assert_array_equal(t2.obsm["X_toy"], ref.obsm["X_toy"])


def test_unchanged_table_still_resumes(synth_tiles, tmp_path):
    calls, _ = _crash_then_count(synth_tiles, tmp_path / "ckpt", lambda t: None)
    assert calls < -(-synth_tiles.n_obs // 4)
