"""Encoders whose model code is not in any package installable here (issue 16).

* Hibou-L (https://huggingface.co/histai/hibou-L) and KEEP
  (https://huggingface.co/Astaxanthin/KEEP) ship their architecture as Python files inside
  their Hugging Face repositories: the cards load them with
  ``AutoModel.from_pretrained(..., trust_remote_code=True)``. Running that code is an explicit
  opt-in, off by default: ``create_encoder("hibou-l", trust_remote_code=True)``, or for the CLI
  the environment variable ``MMPATH_TRUST_REMOTE_CODE=hibou-l`` (a comma-separated list of
  entry names). The module is built from the downloaded folder when the weights load, so these
  entries cannot be built (or checked) on the meta device.
* MUSK (https://huggingface.co/xiangjx/musk) lives in the ``musk`` package, published only on
  GitHub (``pip install fairscale git+https://github.com/lilab-stanford/MUSK``); without it
  ``create_encoder("musk")`` says so in one line. With it, the card's construction:
  ``timm.create_model("musk_large_patch16_384")``, ``musk.utils.load_model_and_may_interpolate``
  and ``model(image=x, with_head=False, out_norm=False, ms_aug=False, return_global=True)[0]``
  (1024-d) -- never run here.

Features: Hibou-L ``pooler_output`` (Trident's loader; 1024-d), KEEP ``encode_image`` (768-d)
and ``encode_text`` with its own tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmpath.errors import ModelError, WeightsError
from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding, Tokens
from mmpath.models.encoders._common import l2n
from mmpath.models.registry import register_encoder
from mmpath.models.weights import WeightsSpec

__all__ = ["RemoteCodeEncoder", "remote_code_allowed", "TRUST_ENV"]

TRUST_ENV = "MMPATH_TRUST_REMOTE_CODE"
IMAGENET = DataConfig(
    input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), mpp=0.5
)


def remote_code_allowed(name: str, trust_remote_code: bool = False) -> bool:
    """True when the caller opted in for ``name`` (argument, or ``MMPATH_TRUST_REMOTE_CODE``)."""
    if trust_remote_code:
        return True
    names = {n.strip().lower() for n in os.environ.get(TRUST_ENV, "").split(",")}
    return name.lower() in names


class RemoteCodeEncoder(Encoder):
    """A transformers model whose code comes from its own repository (opt-in).

    The architecture exists only once :meth:`load_pretrained` has read the folder; before that
    every call says how to load it.
    """

    def __init__(self, info: EncoderInfo, repo: str, *, text: bool = False) -> None:
        super().__init__()
        self.info, self.repo, self.text = info, repo, text
        self.model: Any = None
        self.tokenizer: Any = None

    def _need(self) -> Any:
        if self.model is None:
            raise ModelError(
                f"{self.info.name} is built from the files of {self.repo} (remote code); load it "
                "with its weights (mmpath weights install, then create_encoder with "
                "trust_remote_code=True)"
            )
        return self.model

    def load_pretrained(self, location: Path, *, sha256: str | None = None) -> None:
        import transformers

        folder = Path(location)
        if not folder.is_dir():
            raise WeightsError(f"{self.info.name} needs its whole model folder, not {folder}")
        try:
            self.model = transformers.AutoModel.from_pretrained(
                str(folder), trust_remote_code=True, local_files_only=True
            ).eval()
            if self.text:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(folder), trust_remote_code=True, local_files_only=True
                )
        except (OSError, ValueError, ImportError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise WeightsError(f"cannot load {self.info.name} from {folder}: {first}") from None

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        model = self._need()
        if hasattr(model, "encode_image"):  # KEEP
            feats = model.encode_image(x)
            return ImageEmbedding(feats, l2n(feats) if self.text else None)
        return ImageEmbedding(model(pixel_values=x).pooler_output, None)  # Hibou

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        self._need()
        if not self.text:
            return super().tokenize(texts)
        enc = self.tokenizer(
            list(texts),
            max_length=256,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        return Tokens(enc["input_ids"], enc["attention_mask"])

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        model = self._need()
        return model.encode_text(
            {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        )

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))


def _refuse(name: str, repo: str) -> ModelError:
    return ModelError(
        f"{name} runs model code from its Hugging Face repository ({repo}); read it, then pass "
        f"trust_remote_code=True (or set {TRUST_ENV}={name}) to allow it"
    )


HIBOU_INFO = EncoderInfo(
    "hibou-l",
    "image",
    1024,
    data=DataConfig(
        input_size=224, mean=(0.7068, 0.5755, 0.722), std=(0.195, 0.2316, 0.1816), mpp=0.5
    ),
    pooling="pooler",
    license="Apache-2.0 (gated; remote code)",
    source="https://huggingface.co/histai/hibou-L (Nechaev et al., 2024); trust_remote_code",
)
KEEP_INFO = EncoderInfo(
    "keep",
    "image-text",
    768,
    proj_dim=768,
    data=IMAGENET,
    pooling="clip",
    license="not gated; see the model card (licence not checked here; remote code)",
    source="https://huggingface.co/Astaxanthin/KEEP (Zhou et al., 2024); trust_remote_code",
)
MUSK_INFO = EncoderInfo(
    "musk",
    "image",
    1024,
    data=DataConfig(input_size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mpp=0.5),
    pooling="cls",
    license="CC-BY-NC-ND-4.0 (gated)",
    source="https://huggingface.co/xiangjx/musk (Xiang et al., Nature 2025)",
)
MUSK_INSTALL = "pip install fairscale git+https://github.com/lilab-stanford/MUSK"


@register_encoder(
    "hibou-l",
    HIBOU_INFO,
    weights=WeightsSpec(hub_id="histai/hibou-L", gated=True),
    aliases=("hibou_l",),
)
def hibou_l(*, trust_remote_code: bool = False) -> RemoteCodeEncoder:
    """Hibou-L (DINOv2 ViT-L/14 with registers) from its repository's code; opt-in."""
    if not remote_code_allowed("hibou-l", trust_remote_code):
        raise _refuse("hibou-l", "histai/hibou-L")
    return RemoteCodeEncoder(HIBOU_INFO, "histai/hibou-L")


@register_encoder("keep", KEEP_INFO, weights=WeightsSpec(hub_id="Astaxanthin/KEEP"))
def keep(*, trust_remote_code: bool = False) -> RemoteCodeEncoder:
    """KEEP image-text model from its repository's code; opt-in."""
    if not remote_code_allowed("keep", trust_remote_code):
        raise _refuse("keep", "Astaxanthin/KEEP")
    return RemoteCodeEncoder(KEEP_INFO, "Astaxanthin/KEEP", text=True)


class MuskEncoder(Encoder):
    """MUSK's vision side through the ``musk`` package (GitHub only)."""

    def __init__(self) -> None:
        super().__init__()
        import timm
        from musk import modeling  # noqa: F401 - registers musk_large_patch16_384 with timm

        self.model = timm.create_model("musk_large_patch16_384")
        self.info = MUSK_INFO

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        out = self.model(
            image=x, with_head=False, out_norm=False, ms_aug=False, return_global=True
        )[0]
        return ImageEmbedding(out, None)

    def load_pretrained(self, location: Path, *, sha256: str | None = None) -> None:
        from musk import utils

        from mmpath.models.weights import _pick_file

        path = Path(location)
        path = _pick_file(path, ("model.safetensors",))[0] if path.is_dir() else path
        utils.load_model_and_may_interpolate(str(path), self.model, "model|module", "")


@register_encoder(
    "musk",
    MUSK_INFO,
    weights=WeightsSpec(hub_id="xiangjx/musk", files=("model.safetensors",), gated=True),
    requires="musk.modeling",
    install=MUSK_INSTALL,
)
def musk() -> MuskEncoder:
    """MUSK ViT-L/16 at 384 px (1024-d), needs the ``musk`` package."""
    return MuskEncoder()
