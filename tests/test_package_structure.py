"""House rules for the public API (scanpy's tests/test_package_structure.py in spirit).

* ``import mmpath`` does not import torch;
* public functions document themselves (a docstring with a one-line summary);
* at most three positional parameters, no positional booleans;
* every CLI verb module registers itself and every demo step module exists.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import mmpath as mm

NAMESPACES = ["io", "pp", "tl", "pl", "index", "datasets"]
NAMESPACES += ["archive"]
# Known, deliberate exceptions: (namespace, name) -> why.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _public_functions():
    for ns in NAMESPACES:
        mod = getattr(mm, ns)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield ns, name, obj
            elif inspect.isclass(obj):
                yield ns, name, obj  # classes: docstring rule only


def test_import_is_light():
    code = "import sys, mmpath; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_models_load_lazily():
    code = "import mmpath as mm, sys; mm.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("ns", "name", "obj"), list(_public_functions()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_api_rules(ns, name, obj):
    if (ns, name) in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[(ns, name)])
    doc = inspect.getdoc(obj)
    assert doc and doc.splitlines()[0].strip(), f"mm.{ns}.{name} has no docstring summary"
    if inspect.isclass(obj):
        return
    params = list(inspect.signature(obj).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3, f"mm.{ns}.{name} has {len(positional)} positional parameters"
    for p in positional:
        assert not isinstance(p.default, bool), f"mm.{ns}.{name}: positional bool {p.name!r}"


def test_cli_modules_register():
    from mmpath.cli import COMMAND_MODULES, build_parser

    for name in COMMAND_MODULES:
        assert hasattr(importlib.import_module(f"mmpath.cli.{name}"), "register")
    assert build_parser().prog == "mmpath"


def test_demo_steps_exist():
    from mmpath.demo import STEPS

    for module, _title in STEPS:
        assert hasattr(importlib.import_module(f"mmpath.demo.{module}"), "run")
