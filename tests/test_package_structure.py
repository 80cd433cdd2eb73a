"""House rules for the public API (scanpy's tests/test_package_structure.py in spirit).

* ``import mmpath`` does not import torch;
* public functions document themselves (a docstring with a one-line summary);
* at most three positional parameters, no positional booleans;
* every CLI verb module registers itself and every demo step module exists;
* by AST over every module of the package: no import (lazy or not) runs from a lower layer up
  to a higher one (:data:`LAYERS`), no module-level torch import outside ``models``/``train``,
  no ``uns["mmpath"]`` literal outside ``_keys``/``io/_prov``;
* public ``tl``/``pp``/``pl`` functions take ``adata``/``slide`` first, ``key_added``/``use_rep``
  are keyword-only, and public functions annotate their return type.

Every exception is listed with its reason: the lists are the to-do, kept short and honest.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import mmpath as mm

NAMESPACES = ["io", "pp", "tl", "pl", "index", "datasets"]
NAMESPACES += ["archive"]
NAMESPACES += ["metrics"]
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


# -- layers: declared once, checked by AST ---------------------------------------------------
# Lowest first. A module may import (at module level or lazily inside a function) only from its
# own layer or a lower one. Names in one tuple share a layer. Why this order:
# * the leaves (keys, errors, names, registries, settings) import nothing of mmpath above them;
# * ``config`` sits with ``io``: it writes resolved YAML atomically through ``io._atomic``;
# * ``_weights`` (the torch-free weights lookup) sits with ``io``: it recovers interrupted
#   installs through ``io._atomic``;
# * ``metrics`` is a leaf above ``pp``: scores of arrays and tables, used by everything above;
# * ``models`` (torch) < ``datasets`` < ``train``: the loop trains registered models on datasets;
# * ``train`` < ``tl``: table verbs fit heads through the one training loop (``fit_expression``);
# * ``pl`` draws tables (it imports only ``io``/``pp``/``metrics``), so it sits below ``index``
#   and ``archive``, which draw with it (archive thumbnails); ``index`` and ``archive`` run
#   ``tl`` verbs; ``serve`` and ``demo`` put them together; ``cli`` is the top, and the
#   package root lazily exposes all.
LAYERS: list[tuple[str, ...]] = [
    (
        "_keys",
        "errors",
        "_version",
        "_names",
        "_registry",
        "_settings",
        "_moved",
        "_fork",
    ),
    ("io", "config", "_weights"),
    ("pp",),
    ("metrics",),
    ("models",),
    ("datasets",),
    ("train",),
    ("tl",),
    ("pl",),
    ("index",),
    ("archive",),
    ("serve",),
    ("demo",),
    ("cli",),
    ("__init__", "__main__"),
]
# (importing module, imported module) -> why it is allowed for now. To-do list of issue 12.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {
    # The expression task builds its inputs and saves an ExpressionModel through tl.expression:
    # ExpressionModel cannot move below train, because its in-memory fit runs the train loop
    # (fit_expression -> train.core.fit). Both imports are lazy, inside the task's functions.
    ("mmpath.train.tasks.expr", "mmpath.tl.expression._api"): "expression inputs (issue 12 B)",
    ("mmpath.train.tasks.expr", "mmpath.tl.expression._model"): "expression folder (issue 12 B)",
}
# Modules that import torch at module level outside models/ and train/ -> why.
TORCH_EXCEPTIONS: dict[str, str] = {}
# Public tl/pp/pl functions whose first parameter is not adata/slide -> why.
FIRST_PARAM_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("pp", "annotate_tiles"): "named tiles (a tile table); renaming would break keyword callers",
    ("pp", "spot_tiles"): "takes the spatial-transcriptomics table st and a slide",
    ("pp", "fit_stain_target"): "takes a reference image, not a table",
    ("pp", "normalize_stain"): "takes an image array",
    ("tl", "embed_slide"): "the pure per-slide core: one slide's tile rows and an encoder",
    ("tl", "embed_text"): "embeds prompts (strings), not a table",
    ("tl", "class_embeddings"): "embeds class prompts, not a table",
    ("tl", "summarize_expression"): "summarises an evaluate_expression score frame",
    ("tl", "baseline_segment"): "segments image arrays (a baseline for dice_jaccard)",
    ("pl", "gallery"): "draws search hits (a DataFrame from mm.index)",
    ("pl", "confusion_matrix"): "draws a linear_probe result",
    ("pl", "roc"): "draws a linear_probe result",
}
# Public functions without a return annotation -> why (files other helpers are moving).
RETURN_EXCEPTIONS: dict[tuple[str, str], str] = {}
# The only modules that may spell the provenance slot uns["mmpath"] (everyone else: K.UNS).
UNS_OWNERS = {"mmpath._keys", "mmpath.io._prov"}

ROOT = Path(mm.__file__).parent


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mmpath":
        return None
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"mmpath.{top} is in no layer: add it to LAYERS (once, in order)")


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg and len(parts) > 2:
            parts = parts[:-1]
        yield ".".join(parts), is_pkg, ast.parse(path.read_text(encoding="utf-8"))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(module: str, is_pkg: bool, tree: ast.AST):
    """Every mmpath module imported anywhere in ``tree`` (not under TYPE_CHECKING)."""
    package = module if is_pkg else module.rpartition(".")[0]
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "mmpath":  # from mmpath import tl, io: each name is a subpackage
                for alias in node.names:
                    yield node.lineno, f"mmpath.{alias.name}"
            else:
                yield node.lineno, target
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def test_no_import_runs_up_the_layers():
    bad = []
    for module, is_pkg, tree in _modules():
        mine = _layer(module)
        for line, target in _imports(module, is_pkg, tree):
            theirs = _layer(target)
            if theirs is None or theirs <= mine:
                continue
            key = next(
                (k for k in LAYER_EXCEPTIONS if k[0] == module and target.startswith(k[1])), None
            )
            if key is None:
                bad.append(f"{module}:{line} imports {target} (a higher layer)")
    assert not bad, "imports from a lower layer up (fix, or list in LAYER_EXCEPTIONS):\n" + (
        "\n".join(bad)
    )


def test_layers_name_every_subpackage():
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tops |= {p.stem for p in ROOT.glob("*.py")}
    for top in tops:
        assert _layer(f"mmpath.{top}") is not None


def _module_level_torch(tree: ast.Module):
    def walk(stmts):
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                if any(a.name.split(".")[0] == "torch" for a in node.names):
                    yield node.lineno
            elif (
                isinstance(node, ast.ImportFrom)
                and not node.level
                and ((node.module or "").split(".")[0] == "torch")
            ):
                yield node.lineno
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    yield from walk(sub)

    return list(walk(tree.body))


def test_torch_is_imported_at_module_level_only_in_models_and_train():
    bad = []
    for module, _, tree in _modules():
        if module.split(".")[1] in ("models", "train") or module in TORCH_EXCEPTIONS:
            continue
        bad += [f"{module}:{line}" for line in _module_level_torch(tree)]
    assert not bad, f"module-level torch imports (import it inside the function): {bad}"


def test_no_uns_mmpath_literal_outside_keys_and_prov():
    bad = []
    for module, _, tree in _modules():
        if module in UNS_OWNERS:
            continue
        for node in ast.walk(tree):
            lit = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                lit = node.slice.value
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault", "pop")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                lit = node.args[0].value
            if lit == "mmpath":
                bad.append(f"{module}:{node.lineno}")
    assert not bad, f'uns["mmpath"] spelled out (use mmpath._keys.UNS or io._prov): {bad}'


def _functions():
    for ns, name, obj in _public_functions():
        if inspect.isfunction(obj):
            yield ns, name, obj


def test_first_parameter_is_adata_or_slide():
    bad = []
    for ns, name, obj in _functions():
        if ns not in ("tl", "pp", "pl") or (ns, name) in FIRST_PARAM_EXCEPTIONS:
            continue
        params = list(inspect.signature(obj).parameters)
        if not params or params[0] not in ("adata", "slide"):
            bad.append(f"mm.{ns}.{name}({params[0] if params else ''}...)")
    assert not bad, f"first parameter must be adata or slide (or listed): {bad}"


def test_key_added_and_use_rep_are_keyword_only():
    bad = []
    for ns, name, obj in _functions():
        for p in inspect.signature(obj).parameters.values():
            if p.name in ("key_added", "use_rep") and p.kind is not p.KEYWORD_ONLY:
                bad.append(f"mm.{ns}.{name}: {p.name}")
    assert not bad, f"key_added/use_rep must be keyword-only: {bad}"


def test_public_functions_annotate_their_return():
    bad = [
        f"mm.{ns}.{name}"
        for ns, name, obj in _functions()
        if (ns, name) not in RETURN_EXCEPTIONS
        and inspect.signature(obj).return_annotation is inspect.Signature.empty
    ]
    assert not bad, f"public functions without a return annotation: {bad}"


def test_exception_lists_name_real_functions():
    """A listed function that no longer exists (renamed, moved) is a stale to-do entry."""
    names = {(ns, name) for ns, name, _ in _functions()}
    for key in (*FIRST_PARAM_EXCEPTIONS, *RETURN_EXCEPTIONS):
        assert key in names, f"stale exception {key}"


# Files stay under about 500 lines (house style); 550 is the hard ceiling of "about".
MAX_LINES = 550


def test_no_module_is_over_the_size_ceiling():
    big = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"split these modules (one concept per file): {big}"
