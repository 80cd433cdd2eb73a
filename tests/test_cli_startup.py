"""Light CLI commands stay light (issue 11): ``mmpath --help`` and ``mmpath info`` import no
torch, scipy.stats, sklearn or matplotlib (what they import is checked, not how long it
takes: timed tests are noise on shared machines)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy.stats", "sklearn", "matplotlib", "faiss", "timm", "scanpy")


def _imported(argv: list[str], env: dict | None = None) -> dict:
    code = (
        "import sys, json\n"
        "from mmpath.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY + ('anndata', 'pandas')!r}}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(argv):
    got = _imported(argv)
    assert not any(got.values()), {k: v for k, v in got.items() if v}


def test_info_imports_no_model_or_plot_stack():
    from mmpath.datasets import sample_slide_path

    got = _imported(["info", str(sample_slide_path())])
    assert not any(got[m] for m in HEAVY), {m: got[m] for m in HEAVY if got[m]}


def test_import_mmpath_loads_subpackages_on_access():
    code = (
        "import sys, mmpath as mm\n"
        "a = 'mmpath.tl' in sys.modules or 'pandas' in sys.modules\n"
        "mm.io.open_slide\n"
        "print(a, 'mmpath.io' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"]


@pytest.fixture(scope="module")
def light_env(tmp_path_factory):
    """A fresh MMPATH_HOME (no weights installed), the HF cache empty and offline; the
    encoder catalog cached by one warm-up `mmpath list` (which may import torch)."""
    import os

    tmp = tmp_path_factory.mktemp("light")
    env = {
        **os.environ,
        "MMPATH_HOME": str(tmp / "home"),
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_CACHE": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    _imported(["list"], env)
    return env


def test_list_imports_no_torch(light_env):
    got = _imported(["list"], light_env)
    assert not any(got[m] for m in HEAVY), {m: got[m] for m in HEAVY if got[m]}
    got = _imported(["list", "uni*", "--sources"], light_env)
    assert not got["torch"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["embed", "x.h5ad", "--encoder", "uni"], "no weights for 'uni'"),
        (["embed", "x.h5ad", "--encoder", "uni-v9"], "unknown encoder 'uni-v9'"),
        (["weights", "install", "uni", "/no/such/folder"], "does not exist"),
    ],
)
def test_missing_weights_error_imports_no_torch(light_env, argv, says):
    code = (
        "import sys\n"
        "from mmpath.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=light_env, check=True
    )
    assert out.stdout.split()[-2:] == ["2", "False"], out.stdout + out.stderr
    err = [line for line in out.stderr.splitlines() if line.startswith("mmpath: error")]
    assert len(err) == 1 and says in err[0], out.stderr


def test_catalog_equals_the_live_registry(tmp_path, monkeypatch):
    """The torch-free catalog lists exactly what ``list_encoders`` lists, and refuses a
    missing-weights or unknown encoder with the registry's own message."""
    import pandas as pd

    from mmpath.cli import _catalog
    from mmpath.errors import MmpathError
    from mmpath.models import create_encoder, list_encoders

    monkeypatch.setenv("MMPATH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _catalog._cached.cache_clear()
    monkeypatch.setattr(_catalog, "_live", lambda: False)  # as in a fresh `mmpath list`
    pd.testing.assert_frame_equal(_catalog.list_table("*"), list_encoders("*"))
    assert len(list(tmp_path.glob("home/cache/encoders-*.json"))) == 1
    _catalog._cached.cache_clear()  # now read back from the cache file
    pd.testing.assert_frame_equal(_catalog.list_table("*"), list_encoders("*"))
    pd.testing.assert_frame_equal(_catalog.list_table("vir*"), list_encoders("vir*"))
    for name in ("uni", "uni1", "not-an-encoder"):
        with pytest.raises(MmpathError) as light:
            _catalog.check_encoder(name)
        with pytest.raises(MmpathError) as full:
            create_encoder(name)
        assert type(light.value) is type(full.value) and str(light.value) == str(full.value)
    _catalog.check_encoder("tiny_vit")  # random by design: nothing to find
    _catalog.check_encoder("timm:vit_tiny_patch16_224")  # prefixed names: left to the registry
