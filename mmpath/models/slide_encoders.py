"""Pretrained slide encoders: a slide's tile embeddings (+ positions) -> one slide embedding.

Each entry records what it needs, because a slide encoder only works on the exact patch
features it was trained on: the patch encoder, its feature width, the tile size and the
magnification (µm/px). :func:`check_slide_features` refuses a table whose embeddings do not
match, in one line, before any model is loaded.

Loading code follows each model card (facts checked against the authors' code and Trident's
``slide_encoder_models``):

* ``titan`` (MahmoodLab/TITAN, CC-BY-NC-ND-4.0, gated): CONCH v1.5 features (768-d) of
  512 px tiles at 20x (0.5 µm/px), ``AutoModel.from_pretrained(..., trust_remote_code=True)``,
  ``encode_slide_from_patch_features(features, coords, patch_size_lv0)`` -> 768-d.
* ``prism`` (paige-ai/Prism, CC-BY-NC-ND-4.0, gated): Virchow (v1) tile embeddings (2560-d,
  class token + mean patch token) of 224 px tiles at 20x, remote code,
  ``slide_representations(x)["image_embedding"]`` -> 1280-d.
* ``gigapath-slide`` (prov-gigapath/prov-gigapath, gated): Prov-GigaPath tile embeddings
  (1536-d) of 256 px tiles at 20x and their level-0 coordinates;
  ``gigapath.slide_encoder.create_model("hf_hub:prov-gigapath/prov-gigapath",
  "gigapath_slide_enc12l768d", 1536, global_pool=True)`` (LongNet; the ``gigapath`` package
  from GitHub, fairscale and flash-attn), output of layer 11 -> 768-d.
* ``feather`` (MahmoodLab/abmil.base.conch_v15.pc108-24k): MIL-Lab's gated-attention ABMIL on
  CONCH v1.5 features, ``forward_features(x)`` -> 512-d (Trident's ``embedding_dim``). Its
  repository ships remote code too, but the architecture is small and public (MIL-Lab's
  ``abmil/base.yaml``), so it is **built here** from torchmil (:mod:`mmpath.models.slide_feather`)
  without remote code, and checked at full size on the meta device.

TITAN and PRISM ship their model code only inside their Hugging Face repositories (run only
with ``trust_remote_code=True``, an explicit opt-in), and the GigaPath slide encoder (LongNet)
lives in the GitHub-only ``gigapath`` package (its ``torchscale`` fork is not on PyPI either):
these three **cannot be built offline** and are not meta-checked; ``mmpath list`` says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmpath._registry import Registry
from mmpath.errors import DataError, ModelError, WeightsError

log = logging.getLogger(__name__)

__all__ = [
    "SlideEncoderSpec",
    "slide_encoders",
    "create_slide_encoder",
    "check_slide_features",
    "LoadedSlideEncoder",
    "build_slide_encoder",
]

slide_encoders: Registry = Registry("slide encoder")


@dataclass(frozen=True)
class SlideEncoderSpec:
    """What a slide encoder needs and where it comes from."""

    name: str
    repo: str  # Hugging Face repository of the weights (and remote code)
    patch_encoders: tuple[str, ...]  # accepted patch-encoder names (embedding provenance)
    feature_dim: int  # width of the patch features it reads
    tile_px: int  # tile side the patch features were cut at ...
    mpp: float  # ... at this resolution (0.5 µm/px = 20x)
    out_dim: int
    licence: str
    gated: bool
    remote_code: bool  # the architecture comes from the model repo (trust_remote_code)
    needs_coords: bool
    requires: str = ""  # pip packages beyond transformers
    offline: bool = False  # the architecture is built here (meta-checked), no remote code

    @property
    def status(self) -> str:
        """One line for ``mmpath list``."""
        how = "remote code (trust_remote_code opt-in)" if self.remote_code else self.requires
        built = (
            "built here (torchmil), checked at full size offline"
            if self.offline
            else f"architecture from {how}; not built or checked offline"
        )
        return (
            f"needs {self.patch_encoders[0]} {self.feature_dim}-d features of {self.tile_px} px "
            f"at {self.mpp} µm/px; {self.licence}{', gated' if self.gated else ''}; {built}"
        )


for _spec in (
    SlideEncoderSpec(
        "titan",
        "MahmoodLab/TITAN",
        ("conch_v15", "conch-v1.5", "conchv1_5"),
        768,
        512,
        0.5,
        768,
        "CC-BY-NC-ND-4.0",
        True,
        True,
        True,
    ),
    SlideEncoderSpec(
        "prism",
        "paige-ai/Prism",
        ("virchow", "virchow1"),
        2560,
        224,
        0.5,
        1280,
        "CC-BY-NC-ND-4.0",
        True,
        True,
        False,
        requires="environs sacremoses",
    ),
    SlideEncoderSpec(
        "gigapath-slide",
        "prov-gigapath/prov-gigapath",
        ("prov-gigapath", "gigapath"),
        1536,
        256,
        0.5,
        768,
        "Prov-GigaPath licence (see the model card)",
        True,
        False,
        True,
        requires="fairscale, flash_attn==2.5.8, git+https://github.com/prov-gigapath/prov-gigapath",
    ),
    SlideEncoderSpec(
        "feather",
        "MahmoodLab/abmil.base.conch_v15.pc108-24k",
        ("conch_v15", "conch-v1.5", "conchv1_5"),
        768,
        512,
        0.5,
        512,
        "see the model card (not checked)",
        False,  # gating not checked
        False,  # built here (slide_feather), not from the repository's code
        False,
        requires="torchmil (pip install 'mmpath[mil]')",
        offline=True,
    ),
):
    slide_encoders.register(_spec.name, meta=_spec)(lambda spec=_spec: spec)


def _spec(name: str) -> SlideEncoderSpec:
    if name not in slide_encoders:
        raise ModelError(
            f"unknown slide encoder {name!r}; choose one of {', '.join(slide_encoders.list())}"
        )
    return slide_encoders.get(name).meta


def check_slide_features(adata, name: str, *, use_rep: str) -> SlideEncoderSpec:
    """Refuse (one :class:`DataError` line) a table whose features the encoder cannot read.

    Checks the width of ``obsm[use_rep]``, the patch encoder recorded in the embedding's
    provenance, and the tile size / µm per pixel recorded by the tiling.
    """
    from mmpath import _keys as K
    from mmpath.io import _prov

    spec = _spec(name)
    need = (
        f"{spec.name} needs {spec.patch_encoders[0]} features ({spec.feature_dim}-d) of "
        f"{spec.tile_px} px tiles at {spec.mpp} µm/px"
    )
    if use_rep not in adata.obsm:
        raise DataError(f"the table has no obsm[{use_rep!r}]; {need}")
    width = np.shape(adata.obsm[use_rep])[1]
    enc = (_prov.plain(_prov.root(adata).get(K.UNS_EMBEDDINGS, {})) or {}).get(use_rep) or {}
    enc_name = str(enc.get("encoder") or "?")
    if width != spec.feature_dim or (
        enc_name != "?" and enc_name.lower() not in spec.patch_encoders
    ):
        raise DataError(
            f"obsm[{use_rep!r}] holds {enc_name} features ({width}-d) but {need}; embed the "
            f"tiles with {spec.patch_encoders[0]} first"
        )
    for sid in _prov.slide_ids(adata):
        try:
            tiling = _prov.tiling(adata, sid)
        except DataError:
            continue  # no tiling record: trust the caller
        size, mpp = tiling.get("size"), tiling.get("mpp") or tiling.get("mpp_effective")
        if size is not None and int(size) != spec.tile_px:
            raise DataError(f"slide {sid!r} was tiled at {size} px but {need}; re-tile it")
        if mpp is not None and abs(float(mpp) - spec.mpp) > 0.1 * spec.mpp:
            raise DataError(f"slide {sid!r} was tiled at {mpp} µm/px but {need}; re-tile it")
    return spec


class LoadedSlideEncoder:
    """A loaded slide encoder: ``encode(features (N, D), coords (N, 2)) -> (out_dim,)``."""

    def __init__(self, spec: SlideEncoderSpec, model: Any, device: str) -> None:
        self.spec, self.model, self.device = spec, model, device

    def encode(self, features: np.ndarray, coords: np.ndarray, patch_size_lv0: int) -> np.ndarray:
        """The slide embedding of one slide's patch features (level-0 coords, tile size)."""
        import torch

        x = torch.as_tensor(np.asarray(features, np.float32), device=self.device)[None]
        c = torch.as_tensor(np.asarray(coords, np.int64), device=self.device)[None]
        with torch.no_grad():
            name = self.spec.name
            if name == "titan":
                z = self.model.encode_slide_from_patch_features(x, c, patch_size_lv0)
            elif name == "prism":
                z = self.model.slide_representations(x)["image_embedding"]
            elif name == "gigapath-slide":
                self.model.tile_size = patch_size_lv0
                z = self.model(x, c, all_layer_embed=True)[11]
            else:
                z, _ = self.model.forward_features(x)
        return np.asarray(z.float().cpu()).reshape(-1)


def create_slide_encoder(
    name: str, *, trust_remote_code: bool = False, device: str = "cpu", weights=None
) -> LoadedSlideEncoder:
    """Load a slide encoder with its authors' code (see the module docstring).

    ``trust_remote_code`` must be given explicitly for entries whose architecture comes from
    their Hugging Face repository. ``weights`` (a file or folder) is for the encoders built here
    (``feather``): it wins over the Hugging Face cache. Otherwise weights come from the Hugging
    Face cache/hub (gated: accept the terms and log in first); offline without a cached copy
    this fails with one line.

    Example
    -------
    >>> enc = create_slide_encoder("titan", trust_remote_code=True, device="cuda")
    """
    spec = _spec(name)
    if spec.offline:
        return LoadedSlideEncoder(spec, _load_feather(spec, weights).eval().to(device), device)
    if weights is not None:
        raise ModelError(
            f"weights= applies to the slide encoders built here (feather); {name} loads with "
            "its authors' code from the Hugging Face cache"
        )
    if spec.remote_code and not trust_remote_code:
        raise ModelError(
            f"{name} runs model code from its Hugging Face repository ({spec.repo}); read it, "
            "then pass trust_remote_code=True (CLI: --trust-remote-code) to allow it"
        )
    try:
        if spec.name == "gigapath-slide":
            try:
                from gigapath.slide_encoder import create_model
            except ModuleNotFoundError:
                raise ModelError(f"gigapath-slide needs: pip install {spec.requires}") from None
            model = create_model(
                f"hf_hub:{spec.repo}", "gigapath_slide_enc12l768d", 1536, global_pool=True
            )
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(spec.repo, trust_remote_code=True)
            if spec.name == "prism":
                model.text_decoder = None  # slide embeddings only
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"cannot load {name} from {spec.repo} ({first}); it is gated: accept its terms on "
            "Hugging Face, log in, and download it where the hub is reachable"
        ) from None
    return LoadedSlideEncoder(spec, model.eval().to(device), device)


def build_slide_encoder(name: str, *, device: str = "meta"):
    """The architecture of a slide encoder that is built here (random init; ``"meta"``: shapes
    only). Others raise a one-line :class:`ModelError` saying why they cannot be.

    Example
    -------
    >>> m = build_slide_encoder("feather")
    >>> sum(p.numel() for p in m.parameters())
    788096
    """
    import torch

    spec = _spec(name)
    if not spec.offline:
        raise ModelError(f"{name} cannot be built offline: {spec.status}")
    from mmpath.models.slide_feather import FeatherABMIL

    with torch.device(device):
        return FeatherABMIL(in_dim=spec.feature_dim, embed_dim=spec.out_dim)


def _load_feather(spec: SlideEncoderSpec, weights=None):
    from mmpath.models.weights import read_state_dict

    model = build_slide_encoder(spec.name, device="cpu")
    if weights is not None:
        model.load_reference_state(read_state_dict(weights, files=("model.safetensors",)))
        return model
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(spec.repo, allow_patterns=["model.safetensors", "config.json"])
    except Exception as err:  # noqa: BLE001 - offline, gated, not found: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(
            f"cannot get {spec.name}'s weights from {spec.repo} ({first}); download them where "
            "the hub is reachable (accept its terms and log in first if it is gated)"
        ) from None
    model.load_reference_state(read_state_dict(folder, files=("model.safetensors",)))
    return model
