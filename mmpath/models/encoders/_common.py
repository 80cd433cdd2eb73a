"""Helpers shared by the encoder families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmpath.models.base import Tokens


def l2n(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows."""
    return F.normalize(x, dim=-1)


def pick_indices(n_blocks: int, indices: int | Sequence[int]) -> list[int]:
    """timm's convention: an int takes the last ``n`` blocks, a sequence lists them."""
    if isinstance(indices, int):
        if indices < 1:
            raise ValueError("indices must be >= 1")
        return list(range(max(0, n_blocks - indices), n_blocks))
    out = [i if i >= 0 else n_blocks + i for i in indices]
    if any(not 0 <= i < n_blocks for i in out):
        raise ValueError(f"block indices {list(indices)} out of range for {n_blocks} blocks")
    return out


def tokens_to_maps(
    hidden: Sequence[torch.Tensor], n_prefix: int, grid: tuple[int, int]
) -> list[torch.Tensor]:
    """(B, prefix + H*W, C) token sequences -> list of (B, C, H, W) maps."""
    h, w = grid
    out = []
    for t in hidden:
        patches = t[:, n_prefix:, :]
        b, n, c = patches.shape
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not form a {h}x{w} grid")
        out.append(patches.transpose(1, 2).reshape(b, c, h, w).contiguous())
    return out


def clip_bpe_tokenize(texts: Sequence[str], context_length: int) -> Tokens:
    """CLIP's BPE tokenizer (bundled with open_clip, works offline); pad id 0."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = _bpe_tokenizer(context_length)
    ids = tok(list(texts))
    assert isinstance(tok, SimpleTokenizer)
    return Tokens(ids, (ids != 0).long())


_BPE: dict[int, object] = {}


def _bpe_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    if context_length not in _BPE:
        _BPE[context_length] = SimpleTokenizer(context_length=context_length)
    return _BPE[context_length]
