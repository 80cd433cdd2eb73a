"""Hostile inputs to the CLI (issue 10): each one must end in one clear line and exit 2.

For every case the CLI runs in-process (``mmpath.cli.main``) inside one shared folder of
fixtures, and the test asserts:

* exit code 2, at most 3 lines on stderr, no traceback, no "rerun with --debug" (the
  last-resort handler is for bugs, not for inputs we know about);
* no file outside the case's own output path was created, changed or deleted (the whole
  folder is snapshotted: sizes, mtimes and hashes);
* no code ran: payloads (filter expressions, pickles) try to create sentinel files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmpath import _keys as K
from mmpath.cli import main

SENTINEL = "PWNED"  # payloads try to create <world>/../PWNED-<n>


@pytest.fixture(autouse=True)
def _restore_logging():
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _png_slide(path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = np.full((300, 400, 3), 240, np.uint8)
    arr[50:250, 80:320] = rng.integers(60, 160, (200, 240, 3))
    arr[50:250, 80:320, 1] //= 2  # pinkish-purple: tissue-like
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, testdata):
    """A folder of valid and tampered inputs, built once (about 10 s)."""
    import torch

    import mmpath as mm

    base = tmp_path_factory.mktemp("fuzz")
    w = base / "world"
    w.mkdir()
    old_home = os.environ.get("MMPATH_HOME")
    os.environ["MMPATH_HOME"] = str(w / "home")
    slide = _png_slide(w / "s.png")
    with mm.io.open_slide(slide, mpp=0.5) as s:
        t = mm.pp.tile(s, 64, min_tissue=0)
    t.uns[K.UNS][K.UNS_SLIDES]["s"]["path"] = str(slide)
    mm.io.write_h5ad(t, w / "t.h5ad")
    rng = np.random.default_rng(0)
    e = t.copy()
    e.obsm["X_toy"] = rng.standard_normal((e.n_obs, 8)).astype(np.float32)
    e.obs["organ"] = "colon"
    mm.io.write_h5ad(e, w / "e.h5ad")
    mm.index.build(e, use_rep="X_toy", factory="Flat").save(w / "i.idx")

    # tampered tables
    b = e.copy()
    b.obsm["X_obj"] = np.array([["a"] * 4] * b.n_obs, dtype=object)
    mm.io.write_h5ad(b, w / "obj.h5ad")
    b = t.copy()
    b.uns[K.UNS][K.UNS_SLIDES]["s"][K.UNS_TILING]["size"] = -64
    mm.io.write_h5ad(b, w / "size.h5ad")
    b = t.copy()
    x = b.obs[K.X].astype(float)
    x.iloc[0] = np.nan
    b.obs[K.X] = x
    mm.io.write_h5ad(b, w / "nan.h5ad")
    (w / "empty.h5ad").write_bytes(b"")
    (w / "afile").write_text("not a folder")

    # tampered indexes
    def idx_variant(name, edit):
        shutil.copytree(w / "i.idx", w / name)
        m = json.loads((w / name / "manifest.json").read_text())
        edit(m)
        (w / name / "manifest.json").write_text(json.dumps(m))

    idx_variant("fv.idx", lambda m: m.update(format_version="abc"))
    idx_variant("nobytes.idx", lambda m: m["files"]["index.faiss"].pop("bytes"))
    idx_variant("nofiles.idx", lambda m: m.pop("files"))
    shutil.copytree(w / "i.idx", w / "flip.idx")
    raw = bytearray((w / "flip.idx" / "index.faiss").read_bytes())
    raw[-200:] = bytes(255 - v for v in raw[-200:])
    (w / "flip.idx" / "index.faiss").write_bytes(bytes(raw))

    # model folders
    demo = Path(mm.__file__).parent / "data" / "models" / "mmpath-demo-vit"
    for name, line in (("ckpt_model", "checkpoint_path: ../evil.pt"), ("kw_model", "bogus: 3")):
        shutil.copytree(demo, w / name)
        cfg = (w / name / "config.yaml").read_text()
        cfg = cfg.replace("  dynamic_img_size: true\n", f"  dynamic_img_size: true\n  {line}\n")
        (w / name / "config.yaml").write_text(cfg)
    (w / "weights_src").mkdir()
    (w / "weights_src" / "model.safetensors").write_bytes(b"\0" * 16)

    # training runs with a damaged or pickle-laden checkpoint
    cfg = (
        "out: run\nmodel:\n  name: tiny_vit\n  pretrained: false\n  head_hidden: 16\n"
        "  head_dim: 8\ndata:\n  train: [t.h5ad]\n  val_fraction: 0.1\n  input_size: 32\n"
        "train:\n  epochs: 1\n  batch_size: 4\n  lr: 1.0e-3\n"
    )
    (w / "ssl.yaml").write_text(cfg)
    for run in ("run_trunc", "run_pickle", "run_foreign"):
        (w / run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "model": {}, "optimizer": {}}, w / "run_trunc/checkpoints/last.pt")
    data = (w / "run_trunc/checkpoints/last.pt").read_bytes()
    (w / "run_trunc/checkpoints/last.pt").write_bytes(data[: len(data) // 2])
    torch.save(_Payload(str(base / f"{SENTINEL}-pickle")), w / "run_pickle/checkpoints/last.pt")
    torch.save([1, 2, 3], w / "run_foreign/checkpoints/last.pt")

    # Visium folders whose count matrix is empty or a directory
    src = testdata / "squidpy"
    for name in ("vis_empty", "vis_dir"):
        shutil.copytree(src, w / name)
        (w / name / "filtered_feature_bc_matrix.h5").unlink()
    (w / "vis_empty" / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    (w / "vis_dir" / "filtered_feature_bc_matrix.h5").mkdir()
    (w / "zero.svs").write_bytes(b"")
    yield w
    if old_home is None:
        os.environ.pop("MMPATH_HOME", None)
    else:
        os.environ["MMPATH_HOME"] = old_home


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _where(n: int) -> list[str]:
    s = f"../{SENTINEL}-where{n}"
    return [
        f"slide_id == 's' and @pd.io.common.os.system('touch {s}') == 0",
        f"@self.__class__.__init__.__globals__['os'].system('touch {s}') == 0",
        f"organ.__class__.__base__.__subclasses__()[0]('touch {s}')",
        f"`organ` == 'colon' or __import__('os').system('touch {s}')",
        f"(lambda: __import__('os').system('touch {s}'))() == 0",
        f"organ == open('{s}', 'w').name",
        "organ[0] == 'c'",
        "organ.str.len() > 0",
        "organ == 'colon' and " * 400 + "organ == 'colon'",
    ][n]


Q = ["search", "i.idx", "--tiles", "e.h5ad", "--rows", "0:2"]
EMB = ["embed", "--encoder", "tiny_vit", "--num-workers", "0"]
FIT = ["expr", "fit", "--encoder", "morph", "--folds", "0", "-o", "expr_out"]
SSL = ["train", "ssl", "--config", "ssl.yaml"]

# (id, argv, output path the case may create/change or None, expected text in the message)
CASES = [
    *[(f"where-{n}", [*Q, "--where", _where(n)], None, "filter") for n in range(9)],
    ("tile-out-file", ["tile", "s.png", "-o", "afile", "--slide-mpp", "0.5"], None, "is a file"),
    (
        "tile-size-neg",
        ["tile", "s.png", "-o", "tt", "--size", "-64", "--slide-mpp", "0.5"],
        "tt",
        "size",
    ),
    ("tile-mpp-nan", ["tile", "s.png", "-o", "tt", "--mpp", "nan"], "tt", "mpp"),
    (
        "tile-min-tissue",
        ["tile", "s.png", "-o", "tt", "--min-tissue", "2", "--slide-mpp", "0.5"],
        "tt",
        "min_tissue",
    ),
    (
        "tile-overlap",
        ["tile", "s.png", "-o", "tt", "--overlap", "999", "--slide-mpp", "0.5"],
        "tt",
        "overlap",
    ),
    ("tile-zero-svs", ["tile", "zero.svs", "-o", "tt"], "tt", "zero.svs"),
    ("info-dir", ["info", "run_trunc"], None, "run_trunc"),
    (
        "build-out-file",
        ["index", "build", "e.h5ad", "-o", "afile", "--use-rep", "X_toy", "--overwrite"],
        None,
        "is a file",
    ),
    (
        "build-obj-rep",
        ["index", "build", "obj.h5ad", "-o", "o.idx", "--use-rep", "X_obj"],
        "o.idx",
        "dtype object",
    ),
    (
        "build-bad-param",
        ["index", "build", "e.h5ad", "-o", "o.idx", "--use-rep", "X_toy", "--param", "bogus=1"],
        "o.idx",
        "bogus",
    ),
    (
        "build-empty-table",
        ["index", "build", "empty.h5ad", "-o", "o.idx", "--use-rep", "X"],
        "o.idx",
        "empty.h5ad",
    ),
    (
        "probe-obj-rep",
        ["probe", "obj.h5ad", "--use-rep", "X_obj", "--label", "organ"],
        None,
        "dtype object",
    ),
    ("manifest-fv", [*Q[:1], "fv.idx", *Q[2:]], None, "format_version"),
    ("manifest-nobytes", [*Q[:1], "nobytes.idx", *Q[2:]], None, "checksum"),
    ("manifest-nofiles", [*Q[:1], "nofiles.idx", *Q[2:]], None, "files"),
    ("index-flipped", [*Q[:1], "flip.idx", *Q[2:]], None, "index.faiss"),
    ("index-missing", [*Q[:1], "nope.idx", *Q[2:]], None, "no index"),
    ("rows-xy", [*Q[:-1], "x:y"], None, "--rows"),
    ("rows-names", [*Q[:-1], "nope,also-nope"], None, "--rows"),
    ("param-unknown", [*Q, "--param", "bogus=3"], None, "bogus"),
    ("param-nan", [*Q, "--param", "nprobe=nan"], None, "nprobe"),
    ("param-neg", [*Q, "--param", "efSearch=-1"], None, "efSearch"),
    ("param-syntax", [*Q, "--param", "nprobe"], None, "NAME=VALUE"),
    ("k-zero", [*Q, "-k", "0"], None, "k must be"),
    ("k-text", [*Q, "-k", "many"], None, "-k"),
    ("query-not-table", [*Q[:3], "afile"], None, "afile"),
    ("embed-size-neg", [*EMB, "size.h5ad"], "size.h5ad", "size=-64"),
    ("embed-nan-xy", [*EMB, "nan.h5ad"], "nan.h5ad", "x/y"),
    ("embed-workers", [*EMB[:-1], "-3", "t.h5ad"], None, "--num-workers"),
    ("embed-cuda", [*EMB, "--device", "cuda", "t.h5ad"], None, "GPU"),
    ("embed-gpu-name", [*EMB, "--device", "gpu0", "t.h5ad"], None, "device"),
    ("embed-batch", [*EMB, "--batch-size", "0", "t.h5ad"], "t.h5ad", "batch_size"),
    ("embed-chunk", [*EMB, "--chunk-size", "-1", "t.h5ad"], "t.h5ad", "chunk_size"),
    ("embed-key", [*EMB, "--key-added", "../evil", "t.h5ad"], "t.h5ad", "evil"),
    ("embed-unknown-encoder", [*EMB[:2], "no_such_model", "t.h5ad"], None, "no_such_model"),
    (
        "embed-ckpt-path",
        [*EMB[:2], "local-dir:ckpt_model", *EMB[3:], "t.h5ad"],
        "t.h5ad",
        "checkpoint_path",
    ),
    ("embed-bad-kwarg", [*EMB[:2], "local-dir:kw_model", *EMB[3:], "t.h5ad"], "t.h5ad", "bogus"),
    ("resume-truncated", [*SSL, "--out", "run_trunc", "--resume"], "run_trunc", "damaged"),
    ("resume-pickle", [*SSL, "--out", "run_pickle", "--resume"], "run_pickle", "refused"),
    ("resume-foreign", [*SSL, "--out", "run_foreign", "--resume"], "run_foreign", "checkpoint"),
    ("set-lr-nan", [*SSL, "--out", "r", "--set", "train.lr=nan"], "r", "finite"),
    ("set-lr-inf", [*SSL, "--out", "r", "--set", "train.lr=inf"], "r", "finite"),
    ("set-unknown", [*SSL, "--out", "r", "--set", "train.bogus=1"], "r", "bogus"),
    ("set-epochs-text", [*SSL, "--out", "r", "--set", "train.epochs=lots"], "r", "epochs"),
    ("weights-dotdot", ["weights", "install", "..", "weights_src"], None, "'..'"),
    ("weights-dot", ["weights", "install", ".", "weights_src", "--force"], None, "'.'"),
    ("weights-empty", ["weights", "install", "", "weights_src", "--force"], None, "''"),
    ("weights-slash", ["weights", "install", "a/../../b", "weights_src"], None, "a/../../b"),
    ("visium-empty", [*FIT, "--st", "vis_empty", "--slide", "s.png"], "expr_out", "empty"),
    ("visium-dir", [*FIT, "--st", "vis_dir", "--slide", "s.png"], "expr_out", "folder"),
    (
        "visium-h5ad-empty",
        [*FIT, "--st", "empty.h5ad", "--slide", "s.png"],
        "expr_out",
        "empty.h5ad",
    ),
    (
        "expr-param",
        [*FIT, "--st", "vis_dir", "--slide", "s.png", "--param", "bogus=1"],
        "expr_out",
        "bogus",
    ),
    ("unknown-option", [*Q, "--bogus"], None, "--bogus"),
    ("unknown-verb", ["frobnicate"], None, "frobnicate"),
]


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize(
    ("argv", "out", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_input_is_one_line_exit_2(world, argv, out, expect, capsys, monkeypatch):
    monkeypatch.chdir(world)
    before = _snapshot(world.parent)
    code = main(["-q", *argv])
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip()]
    assert code == 2, (code, cap.err[-500:])
    assert 1 <= len(err) <= 3, err
    assert not any("Traceback" in line or "--debug" in line for line in err), err
    assert "error" in err[-1] and expect.lower() in err[-1].lower(), err
    after = _snapshot(world.parent)
    allowed = set() if out is None else {f"world/{out}"}
    allowed.add("world/home/cache")  # the encoder catalog cache (issue 11), not an output

    def outside(key):
        if key == "world/home":  # created to hold that cache
            return False
        return not any(key == a or key.startswith(a + "/") for a in allowed)

    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not {k for k in changed if outside(k)}, sorted(changed)
    assert not list(world.parent.glob(f"{SENTINEL}*")), "a payload ran"
