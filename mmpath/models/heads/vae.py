"""A variational autoencoder head for anomaly detection on tiles.

Trained on "normal" tiles only, it reconstructs them well and anything else badly, so the
reconstruction error (and how unlikely the latent code is under the prior) scores anomalies.

* Encoder: a light convolutional encoder (default), or the shared backbone's pooled features
  (``encode_image(x).features``) followed by linear maps to ``mu`` and ``log sigma^2``.
* Latent: the reparameterisation trick ``z = mu + sigma * eps`` with ``eps ~ N(0, I)``, so
  gradients reach ``mu`` and ``sigma`` (Kingma & Welling 2014).
* Decoder: transposed convolutions back to the tile, sigmoid output in ``[0, 1]``.
* Loss: ``recon + beta * KL`` with ``recon`` the squared error summed over pixels and
  ``KL = -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2)``, both averaged over the batch.
* Anomaly scores (:meth:`VAEHead.anomaly`): the mean squared reconstruction error of the
  deterministic reconstruction (``z = mu``), the per-pixel error map, and the latent negative
  log-likelihood ``1/2 * ||mu||^2`` under the prior (constant dropped).

Images enter as ``(B, 3, S, S)`` floats in ``[0, 1]``; a backbone encoder gets them resized to
its input size and normalised with its own mean/std.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmpath.errors import ModelError
from mmpath.models.transform import normalize

__all__ = ["VAEConfig", "VAEHead", "VAEOutput", "VAELoss", "AnomalyScores", "reparameterize"]


@dataclass(frozen=True)
class VAEConfig:
    """What a VAE head was built with (saved in its model folder)."""

    image_size: int = 64  # tile side the decoder reconstructs (a power of 2, >= 8)
    latent_dim: int = 32
    base_channels: int = 32  # channels of the first conv; doubles per level, capped at 256
    beta: float = 1.0
    encoder: str = "conv"  # "conv" (light conv encoder) or "backbone" (shared encoder features)

    def __post_init__(self) -> None:
        k = math.log2(self.image_size) if self.image_size > 0 else -1
        if k != int(k) or self.image_size < 8:
            raise ValueError(f"image_size must be a power of 2 >= 8, got {self.image_size}")
        if self.encoder not in ("conv", "backbone"):
            raise ValueError(f"encoder must be 'conv' or 'backbone', got {self.encoder!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")


class VAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, 3, S, S) in [0, 1]
    mu: torch.Tensor  # (B, latent_dim)
    logvar: torch.Tensor  # (B, latent_dim): log sigma^2
    z: torch.Tensor  # (B, latent_dim)


class VAELoss(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class AnomalyScores(NamedTuple):
    recon_error: torch.Tensor  # (B,) mean squared error per pixel and channel
    latent_nll: torch.Tensor  # (B,) 1/2 ||mu||^2
    error_map: torch.Tensor  # (B, S, S) squared error averaged over channels


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``z = mu + sigma * eps`` with ``sigma = exp(logvar / 2)`` and ``eps ~ N(0, I)``.

    Example
    -------
    >>> z = reparameterize(torch.zeros(4, 8), torch.zeros(4, 8))
    """
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())


class VAEHead(nn.Module):
    """Convolutional VAE; the encoder is a light conv net or the shared backbone.

    Parameters
    ----------
    config
        A :class:`VAEConfig`; keyword arguments override its fields.
    backbone
        The shared :class:`~mmpath.models.base.Encoder` (required when
        ``config.encoder == "backbone"``; kept frozen).

    Example
    -------
    >>> vae = VAEHead(image_size=32, latent_dim=8)
    >>> out = vae(torch.rand(2, 3, 32, 32))
    >>> vae.loss(torch.rand(2, 3, 32, 32), out).total.shape
    torch.Size([])
    """

    def __init__(
        self, config: VAEConfig | None = None, *, backbone: nn.Module | None = None, **overrides
    ) -> None:
        super().__init__()
        cfg = config or VAEConfig()
        if overrides:
            cfg = VAEConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        S = cfg.image_size
        n_down = min(4, int(math.log2(S)) - 2)  # down to a 4x4 (or coarser) map
        chans = [min(256, cfg.base_channels * 2**i) for i in range(n_down)]
        self._grid = S // 2**n_down
        self._chans = chans
        flat = chans[-1] * self._grid**2
        if cfg.encoder == "backbone":
            if backbone is None:
                raise ModelError("a VAE with encoder='backbone' needs backbone=<Encoder>")
            self.backbone = backbone
            for p in backbone.parameters():
                p.requires_grad_(False)
            backbone.eval()
            dim = backbone.info.embed_dim
            self.conv_encoder = None
            self.to_stats = nn.Sequential(
                nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 2 * cfg.latent_dim)
            )
        else:
            self.backbone = None
            layers, cin = [], 3
            for c in chans:
                layers.append(_down(cin, c))
                cin = c
            self.conv_encoder = nn.Sequential(*layers, nn.Flatten())
            self.to_stats = nn.Linear(flat, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        ups = [_up(chans[i], chans[i - 1]) for i in range(len(chans) - 1, 0, -1)]
        self.decoder = nn.Sequential(*ups, nn.ConvTranspose2d(chans[0], 3, 4, 2, 1))

    def train(self, mode: bool = True) -> VAEHead:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # the shared backbone stays frozen
        return self

    def _check(self, x: torch.Tensor) -> None:
        S = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != S or x.shape[-2] != S:
            raise ModelError(
                f"the VAE takes (B, 3, {S}, {S}) images in [0, 1], got {tuple(x.shape)}; "
                "resize tiles to the model's image_size"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z | x)``."""
        self._check(x)
        if self.backbone is not None:
            info = self.backbone.info
            size = info.data.input_size
            xb = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear")
            with torch.no_grad():
                h = self.backbone.encode_image(
                    normalize(xb, info.data.mean, info.data.std)
                ).features
        else:
            h = self.conv_encoder(x * 2 - 1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Tiles ``(B, 3, S, S)`` in ``[0, 1]`` from latent codes ``(B, latent_dim)``."""
        h = self.from_latent(z).view(-1, self._chans[-1], self._grid, self._grid)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar, z)

    def loss(self, x: torch.Tensor, out: VAEOutput, *, beta: float | None = None) -> VAELoss:
        """``recon + beta * KL`` (sums over pixels / latent dims, means over the batch)."""
        b = self.config.beta if beta is None else beta
        n = x.shape[0]
        recon = F.mse_loss(out.recon, x, reduction="sum") / n
        kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp()) / n
        return VAELoss(recon + b * kl, recon, kl)

    @torch.no_grad()
    def anomaly(self, x: torch.Tensor) -> AnomalyScores:
        """Reconstruction error (mean and per pixel) and latent NLL of each tile."""
        mu, _ = self.encode(x)
        recon = self.decode(mu)
        err = (recon - x).pow(2).mean(1)
        return AnomalyScores(err.flatten(1).mean(1), 0.5 * mu.pow(2).sum(1), err)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` draws from the prior ``N(0, I)``: ``(n, 3, S, S)``."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)
