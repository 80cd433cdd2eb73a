"""Retrieval metrics for image-text validation.

Captions repeat in pathology data (many tiles share "tumour, dense nuclei"), so a retrieval
counts as correct when the retrieved item carries the *same caption text* as the query's own
pair, and image->text retrieval ranks the distinct captions (duplicates would fill the top k
with copies); with unique captions both are the usual paired recall@k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["retrieval_recall"]


def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    captions: Sequence[str],
    *,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Image->text and text->image recall@k of paired, L2-normalised embeddings.

    Parameters
    ----------
    image_emb
        ``(N, D)`` image embeddings; row ``i`` is paired with caption ``i``.
    text_emb
        ``(N, D)`` embeddings of ``captions``.
    captions
        The ``N`` captions; rows with equal text are interchangeable positives.
    ks
        Cut-offs.

    Returns
    -------
    ``{"i2t_r@1": ..., "t2i_r@1": ..., "i2t_r@5": ..., ...}`` in [0, 1].

    Example
    -------
    >>> retrieval_recall(img, txt, ["a", "b"], ks=(1,))
    {'i2t_r@1': 1.0, 't2i_r@1': 1.0}
    """
    uniq, group = np.unique(
        np.asarray(list(captions), dtype=object).astype(str), return_inverse=True
    )
    group_t = torch.as_tensor(group, device=image_emb.device)
    n_groups = len(uniq)
    # One text embedding per distinct caption (duplicates would fill the top-k with copies).
    first = torch.as_tensor(
        [int(np.flatnonzero(group == g)[0]) for g in range(n_groups)], device=image_emb.device
    )
    img, txt = image_emb.float(), text_emb.float()
    sim_i2t = img @ txt[first].T  # (N images, G captions)
    sim_t2i = txt @ img.T  # (N texts, N images)
    out: dict[str, float] = {}
    for k in ks:
        top_t = sim_i2t.topk(min(int(k), n_groups), dim=1).indices
        i2t = (top_t == group_t[:, None]).any(dim=1).float().mean().item()
        top_i = sim_t2i.topk(min(int(k), len(group)), dim=1).indices
        t2i = (group_t[top_i] == group_t[:, None]).any(dim=1).float().mean().item()
        out[f"i2t_r@{k}"] = i2t
        out[f"t2i_r@{k}"] = t2i
    return out
