"""Light CLI commands stay light (issue 11): ``mmpath --help`` and ``mmpath info`` import no
torch, scipy.stats, sklearn or matplotlib (what they import is checked, not how long it
takes: timed tests are noise on shared machines)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy.stats", "sklearn", "matplotlib", "faiss", "timm", "scanpy")


def _imported(argv: list[str]) -> dict:
    code = (
        "import sys, json\n"
        "from mmpath.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY + ('anndata', 'pandas')!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
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
