"""Check a model folder before ``mmpath weights install`` copies it (and say so in ``list``).

:func:`verify_weights` refuses, with one line, a folder that

* holds no weights file the entry would read (only a ``readme.txt``, say);
* holds a file that is not a readable checkpoint of tensors (random bytes, truncated files,
  pickles with code in them: ``torch.load(weights_only=True)`` refuses those);
* does not fit the entry's architecture: the names and shapes of its tensors are compared with
  the entry built on the ``meta`` device (no memory, no compute), so a multi-GB UNI is checked
  in a second or two. Families that load through ``transformers.from_pretrained`` (which
  renames checkpoints of older transformers versions) are compared by tensor shapes alone.

Tensors are read lazily: safetensors headers only, ``torch.load(mmap=True)`` for pickles.
An installed folder gets a small marker (:data:`MARKER`) recording what was checked and each
file's size; ``mmpath list`` reports such a folder as ``verified`` (still the same files) and
any other folder it finds as ``found``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mmpath._weights import MARKER, _sizes, marker_ok  # noqa: F401 - torch-free home
from mmpath.errors import MmpathError, ModelError, WeightsError
from mmpath.models.weights import WeightsSpec, _pick_file, _read_one

log = logging.getLogger(__name__)

__all__ = ["MARKER", "verify_weights", "write_marker", "marker_ok"]



def _lazy_state(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in one weights file, without reading their data."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as err:  # noqa: BLE001 - any reader error means "unreadable"
            raise WeightsError(
                f"cannot read weights {path}: the file is corrupt or not a safetensors file "
                f"({' '.join(str(err).split()) or type(err).__name__}); download it again"
            ) from None
    state = _read_one(path, lazy=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def _files_of(folder: Path, spec: WeightsSpec | None) -> list[Path]:
    files = spec.files if spec is not None else ()
    return _pick_file(folder, files) if folder.is_dir() else [folder]


def verify_weights(name: str | None, folder: str | Path) -> str:
    """Check that ``folder`` holds loadable weights of entry ``name``; return what was checked.

    Parameters
    ----------
    name
        A registry entry (``"uni"``); ``None`` (or an unregistered name) checks only that the
        folder holds readable tensors.
    folder
        The model folder (or a single weights file).

    Returns
    -------
    ``"names and shapes"``, ``"shapes"`` or ``"tensors"``: how far the check went.

    Raises
    ------
    mmpath.errors.WeightsError
        One line: no weights file, an unreadable file, or tensors that do not fit the model.

    Example
    -------
    >>> verify_weights("uni", "/downloads/UNI")  # doctest: +SKIP
    'names and shapes'
    """
    from mmpath.models.factory import create_encoder
    from mmpath.models.registry import encoders

    folder = Path(folder)
    entry = None
    if name is not None:
        try:
            entry = encoders.get(name)
        except ModelError:
            entry = None
    spec = entry.meta.weights if entry is not None else None
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _files_of(folder, spec):
        shapes.update(_lazy_state(path))
    if not shapes:
        raise WeightsError(f"{folder} holds no tensors; is this the right folder?")
    if entry is None:
        return "tensors"
    try:
        enc = create_encoder(entry.name, device="meta")
    except MmpathError as err:  # an optional package is missing: the tensors were checked
        log.warning("cannot build %r to check the weights against (%s)", entry.name, err)
        return "tensors"
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    if all(k.startswith("module.") for k in meta):  # saved from DDP (read_state_dict does this)
        meta = {k[len("module.") :]: v for k, v in meta.items()}
    from mmpath.models.encoders.hf import _HFBase

    if isinstance(enc, _HFBase):
        return _check_shapes(enc, entry.name, folder, meta)
    enc.load_checkpoint(meta)  # strict names and shapes (WeightsError); meta tensors: no data
    return "names and shapes"


def _check_shapes(enc, name: str, folder: Path, meta: dict[str, torch.Tensor]) -> str:
    """transformers families: renamed tensors are fine, missing shapes are not."""
    own = Counter(tuple(v.shape) for v in enc.model.state_dict().values())
    have = Counter(tuple(v.shape) for v in meta.values())
    short = {s: n - have.get(s, 0) for s, n in own.items() if have.get(s, 0) < n}
    if short:
        brief = ", ".join(f"{n}x{list(s)}" for s, n in list(short.items())[:3])
        raise WeightsError(
            f"weights in {folder} do not match encoder {name!r}: the model needs tensors of "
            f"shapes the files lack ({brief}{'...' if len(short) > 3 else ''}). "
            "Are these the weights of a different model?"
        )
    return "shapes"


def write_marker(folder: Path, name: str, checked: str) -> None:
    """Record in ``folder`` that its weights were checked (and each file's size)."""
    record: dict[str, Any] = {"name": name, "checked": checked, "files": _sizes(folder)}
    (folder / MARKER).write_text(json.dumps(record, indent=1), encoding="utf-8")
