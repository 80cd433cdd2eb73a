"""Moved to :mod:`mmpath.models.heads.expression` (kept so old imports work)."""

from mmpath.models.heads.expression import (  # noqa: F401
    ContrastiveHeads,
    GatedFusionHead,
    MLPHead,
    bleep_loss,
    load_numpy_state,
    run,
    small_work_threads,
    state_to_numpy,
)
