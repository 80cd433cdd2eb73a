"""Moved to :mod:`mmpath.models.heads._complexity` (the VAE head's calibration; kept so old
imports work)."""

from mmpath.models.heads._complexity import (  # noqa: F401
    ComplexityCalibration,
    png_bits_per_pixel,
    vae_scores,
)
