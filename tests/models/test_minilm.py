"""The real all-MiniLM-L6-v2 text tower (test data) gives sensible similarities."""

from __future__ import annotations

import torch


def test_minilm_tumor_is_closer_to_carcinoma_than_to_fat(minilm):
    enc = minilm
    assert enc.info.kind == "text" and enc.info.embed_dim == 384
    with torch.inference_mode():
        e = enc.encode_text(enc.tokenize(["tumor", "carcinoma", "adipose tissue"]))
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.05
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
