"""The one uint8 tile -> normalised tensor transform equals torchvision's reference pipeline."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("torchvision.transforms.v2")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _reference(img: np.ndarray) -> torch.Tensor:
    pipe = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    return pipe(img)


def test_one_tile_and_a_batch_match_torchvision():
    from mmpath.models.transform import to_tensor

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8)
    ref = torch.stack([_reference(t) for t in tiles])
    torch.testing.assert_close(to_tensor(tiles[0], MEAN, STD), ref[0], rtol=0, atol=0)
    torch.testing.assert_close(to_tensor(tiles, MEAN, STD), ref, rtol=0, atol=0)
    # flipped/rotated views (negative strides) and torch input give the same tensor
    view = np.rot90(tiles[1])[:, ::-1]
    torch.testing.assert_close(to_tensor(view, MEAN, STD), _reference(view.copy()))
    torch.testing.assert_close(to_tensor(torch.from_numpy(tiles), MEAN, STD), ref)
    # no mean/std: [0, 1] (the VAE's input), equal to the plain division
    unit = to_tensor(tiles)
    np.testing.assert_allclose(
        unit.numpy(), tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255, rtol=1e-6
    )
    assert unit.dtype == torch.float32 and unit.shape == (3, 3, 20, 24)


def test_every_consumer_uses_the_one_transform():
    """Embedding preprocessing and training tensors equal to_tensor on the same pixels."""
    from mmpath.models.transform import to_tensor
    from mmpath.tl._embed_data import Preprocess
    from mmpath.train.augment import to_tensor as train_to_tensor

    img = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    pre = Preprocess(16, None, None, MEAN, STD, "bicubic")
    torch.testing.assert_close(pre(img), to_tensor(img, MEAN, STD), rtol=0, atol=0)
    torch.testing.assert_close(train_to_tensor(img, MEAN, STD), to_tensor(img, MEAN, STD))
