"""Image towers from timm (UNI, Virchow2, H-optimus-0, Prov-GigaPath, ``timm:<arch>``).

The module is built with ``timm.create_model(arch, pretrained=False, num_classes=0, **kw)``
and checkpoints in timm's own format (``model.safetensors``/``pytorch_model.bin`` of the
hub repositories) load into it unchanged. Keyword arguments are kept plain (layer classes by
name: ``mlp_layer="SwiGLUPacked"``, ``act_layer="silu"``) so a saved folder rebuilds them.

Pooling (what ``features`` holds):

* ``"model"``: timm's own head pooling (``forward_head(pre_logits=True)``): the class token
  for ViTs, global average for CNNs;
* ``"cls+mean"``: class token concatenated with the mean of the patch tokens (Virchow2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import timm
import torch

from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding
from mmpath.models.registry import families

__all__ = ["TimmEncoder"]


def _layer(value: Any) -> Any:
    """Layer classes are stored by name; timm resolves activations by name itself."""
    if isinstance(value, str) and value[:1].isupper():
        import timm.layers

        if not hasattr(timm.layers, value):
            raise ValueError(f"timm.layers has no {value!r}")
        return getattr(timm.layers, value)
    return value


def data_config_from_timm(model: torch.nn.Module, mpp: float | None = None) -> DataConfig:
    cfg = timm.data.resolve_data_config({}, model=model)
    return DataConfig(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mpp=mpp,
    )


class TimmEncoder(Encoder):
    """A timm image model as an image-only :class:`Encoder`.

    Parameters
    ----------
    arch
        timm architecture name.
    pooling
        ``"model"`` (timm's head pooling) or ``"cls+mean"``.
    info
        Frozen description; derived from the model when omitted.
    **model_kwargs
        Passed to ``timm.create_model`` (plain values; layer classes by name).

    Example
    -------
    >>> enc = TimmEncoder("vit_small_patch16_224", img_size=64)
    >>> enc.encode_image(torch.zeros(1, 3, 64, 64)).features.shape
    torch.Size([1, 384])
    """

    def __init__(
        self,
        arch: str,
        *,
        pooling: str = "model",
        info: EncoderInfo | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if pooling not in ("model", "cls+mean"):
            raise ValueError(f"unknown pooling {pooling!r}")
        kwargs = {k: _layer(v) for k, v in model_kwargs.items()}
        kwargs.setdefault("num_classes", 0)
        self.model = timm.create_model(arch, pretrained=False, **kwargs)
        self.pooling = pooling
        dim = self.model.num_features * (2 if pooling == "cls+mean" else 1)
        if info is None:
            info = EncoderInfo(
                name=f"timm:{arch}",
                kind="image",
                embed_dim=dim,
                data=data_config_from_timm(self.model, mpp=None),
                pooling=pooling,
                source=f"timm {arch}",
                slug=f"timm_{arch}",
            )
        self.info = replace(info, embed_dim=dim)
        self._spec = ("timm", {"arch": arch, "pooling": pooling, **model_kwargs})

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0))

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        tokens = self.model.forward_features(x)
        if self.pooling == "cls+mean":
            n = self.num_prefix_tokens
            feats = torch.cat([tokens[:, 0], tokens[:, n:].mean(dim=1)], dim=-1)
        else:
            feats = self.model.forward_head(tokens, pre_logits=True)
        return ImageEmbedding(feats, None)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        idx = indices if isinstance(indices, int) else list(indices)
        return list(
            self.model.forward_intermediates(
                x, indices=idx, intermediates_only=True, output_fmt="NCHW"
            )
        )

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        from mmpath.models.weights import load_strict

        # timm hub checkpoints are the bare model; our own saves carry the "model." prefix.
        if state_dict and all(k.startswith("model.") for k in state_dict):
            state_dict = {k[len("model.") :]: v for k, v in state_dict.items()}
        # classifier weights are not part of an embedding model (num_classes=0)
        own = self.model.state_dict()
        classifier = str(getattr(self.model, "pretrained_cfg", {}).get("classifier", "head"))
        state_dict = {
            k: v for k, v in state_dict.items() if k in own or not k.startswith(f"{classifier}.")
        }
        load_strict(self.model, state_dict, name=self.info.name)


@families.register("timm")
def timm_family(arch: str, **kwargs: Any) -> TimmEncoder:
    """Any timm model by name (random init)."""
    return TimmEncoder(arch, **kwargs)
