"""Text prompts through an encoder's text tower: normalised embeddings in the joint space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmpath.errors import ModelError
from mmpath.tl.embed import _device_of, _prepare, resolve_encoder

__all__ = ["embed_text"]


def embed_text(
    texts: Sequence[str],
    encoder,
    *,
    weights: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
) -> np.ndarray:
    """Embed text prompts with an encoder's text tower.

    Parameters
    ----------
    texts
        Prompts or captions.
    encoder
        A registry name or an Encoder with a text tower (image-text or text model).
    weights
        Weights for an encoder given by name.
    batch_size
        Prompts per forward pass.
    device
        As in :func:`embed`.

    Returns
    -------
    ``float32`` array ``(len(texts), dim)``, L2-normalised (the joint space of image-text
    models, directly comparable with ``obsm["X_<slug>_proj"]``).

    Example
    -------
    >>> txt = mm.tl.embed_text(["tumor epithelium", "stroma"], "tiny_clip")
    """
    import torch

    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    model = resolve_encoder(encoder, weights=weights, device=device)
    info = model.info
    if not info.has_text:
        raise ModelError(
            f"encoder {info.name!r} is image-only and has no text tower; use an image-text "
            "model (e.g. plip, conch, tiny_clip) or a text model for prompts"
        )
    dev = _device_of(model, device)
    _prepare(model, dev)
    dim = info.proj_dim or info.embed_dim
    if not texts:
        return np.zeros((0, dim), np.float32)
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            tokens = model.tokenize(texts[s : s + batch_size]).to(dev)
            out.append(model.encode_text(tokens).float().cpu())
    emb = torch.nn.functional.normalize(torch.cat(out), dim=-1)  # contract: normalised
    return emb.numpy().astype(np.float32)
