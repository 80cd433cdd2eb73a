"""Retrieval metrics for image-text validation.

Captions repeat in pathology data (many tiles share "tumour, dense nuclei"), so both
directions run over the *distinct* captions: image->text ranks the distinct captions
(duplicates would fill the top k with copies), is correct when the image's own caption text
is among the top k, and is averaged per distinct caption (so 500 images of one caption weigh
as much as 5 of another); text->image queries once per distinct caption (not once per row, which
would count a caption shared by 500 rows 500 times) and is correct when one of the top k
images carries that caption. With unique captions both are the usual paired recall@k. With
few distinct captions these are class-level scores: the result says how many there were
(``n_captions``) and the chance level of image->text (``chance_i2t_r@k = k / n_captions``),
and a warning says when fewer than :data:`FEW_CAPTIONS` make them near-trivial.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["retrieval_recall"]

FEW_CAPTIONS = 10
log = logging.getLogger(__name__)


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
    ``{"i2t_r@1": ..., "t2i_r@1": ..., "chance_i2t_r@1": ..., ..., "n_captions": G}``: recalls
    in [0, 1] over the ``G`` distinct captions (see the module notes).

    Example
    -------
    >>> retrieval_recall(img, txt, ["a", "b"], ks=(1,))
    {'i2t_r@1': 1.0, 't2i_r@1': 1.0, 'chance_i2t_r@1': 0.5, 'n_captions': 2}
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
    sim_t2i = txt[first] @ img.T  # (G distinct captions, N images)
    if n_groups < FEW_CAPTIONS:
        log.warning(
            "retrieval over only %d distinct caption(s): recall@k is class-level (chance "
            "image->text r@1 = %.2f), not a paired retrieval score",
            n_groups,
            1.0 / max(n_groups, 1),
        )
    out: dict[str, float] = {}
    for k in ks:
        top_t = sim_i2t.topk(min(int(k), n_groups), dim=1).indices
        hit = (top_t == group_t[:, None]).any(dim=1).float()
        per_caption = torch.zeros(n_groups, device=img.device).index_add_(0, group_t, hit)
        i2t = (per_caption / torch.bincount(group_t, minlength=n_groups)).mean().item()
        top_i = sim_t2i.topk(min(int(k), len(group)), dim=1).indices
        own = torch.arange(n_groups, device=img.device)
        t2i = (group_t[top_i] == own[:, None]).any(dim=1).float().mean().item()
        out[f"i2t_r@{k}"] = i2t
        out[f"t2i_r@{k}"] = t2i
        out[f"chance_i2t_r@{k}"] = min(int(k), n_groups) / n_groups
    out["n_captions"] = n_groups
    return out
