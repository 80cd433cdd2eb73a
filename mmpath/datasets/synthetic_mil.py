"""A synthetic slide cohort with a known slide label: the presence of a rare tile type.

Made for slide-level learning (MIL) tests, the demo and the ``06_slides`` notebook. Every slide
is a tile table whose ``obsm["X_synth"]`` holds tile embeddings drawn from a few common tile
types (per-slide mixture proportions and a per-slide "stain" offset) and, on positive slides,
a **rare signal type** covering 2-5 % of the tiles in one spatial blob. The signal type differs
from the others along one direction only, by far more than the tile noise, so a model that
looks at tiles finds it; but at 2-5 % of the tiles its share of the slide *mean* is smaller
than the slide-to-slide offsets, so mean pooling cannot see it. The truth per tile is
``obs["signal"]``.

Labels: ``label`` ("positive"/"negative", per slide, shared by every slide of a patient),
``patient_id`` (some patients have two slides), a survival pair (``time``, ``event``) whose
hazard is higher for positive patients, and ``signal_frac`` (a regression target).

Example
-------
>>> cohort = mm.datasets.synthetic_mil_cohort(60, seed=0)
>>> len(cohort.tables), cohort.labels.label.value_counts().to_dict()
(60, {'negative': 30, 'positive': 30})
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmpath import _keys as K

__all__ = [
    "MILCohort",
    "synthetic_mil_cohort",
    "synthetic_survival_cohort",
    "write_mil_cohort",
    "SYNTH_REP",
    "SIGNAL",
]

SYNTH_REP = "X_synth"
SIGNAL = "signal"  # obs: True on the rare signal tiles (the truth attention should find)
TILE = 224  # nominal tile size in level-0 pixels


@dataclass
class MILCohort:
    """Tile tables (one AnnData per slide) and the label table (one row per slide)."""

    tables: list
    labels: pd.DataFrame  # slide_id, patient_id, label, time, event, signal_frac


def _table(slide_id: str, emb: np.ndarray, signal: np.ndarray, xy: np.ndarray):
    import anndata as ad

    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical([slide_id] * len(emb)),
            K.X: xy[:, 0].astype(np.int64),
            K.Y: xy[:, 1].astype(np.int64),
            K.TISSUE_FRAC: np.ones(len(emb)),
            SIGNAL: signal,
        },
        index=[K.obs_name(slide_id, i) for i in range(len(emb))],
    )
    a = ad.AnnData(obs=obs)
    a.obsm[SYNTH_REP] = emb.astype(np.float32)
    a.obsm[K.SPATIAL] = (xy + TILE / 2).astype(np.float64)
    a.uns[K.UNS] = {
        K.UNS_SLIDES: {slide_id: {"path": "", "mpp": 0.5, "synthetic": True}},
        K.UNS_EMBEDDINGS: {SYNTH_REP: {"encoder": "synthetic", "synthetic": True}},
    }
    return a


def synthetic_mil_cohort(
    n_slides: int = 60,
    *,
    dim: int = 32,
    tiles: tuple[int, int] = (150, 400),
    signal_frac: tuple[float, float] = (0.02, 0.05),
    paired_patients: int | None = None,
    seed: int = 0,
) -> MILCohort:
    """Make the cohort (see the module docstring). Half the patients are positive.

    Parameters
    ----------
    n_slides
        Number of slides (tables).
    dim
        Embedding width.
    tiles
        Range of tiles per slide.
    signal_frac
        Range of the signal tiles' share on positive slides.
    paired_patients
        Patients with two slides (default: a quarter of the slides).
    seed
        Random seed.

    Returns
    -------
    A :class:`MILCohort`.

    Example
    -------
    >>> cohort = synthetic_mil_cohort(60, seed=0)
    """
    rng = np.random.default_rng(seed)
    pairs = n_slides // 4 if paired_patients is None else paired_patients
    n_patients = n_slides - pairs
    patient_of = np.concatenate([np.arange(n_patients), np.arange(pairs)])
    pos_patient = rng.permutation(np.arange(n_patients) % 2 == 0)
    n_types = 4
    centers = np.zeros((n_types, dim))
    centers[:, : dim - 8] = rng.normal(0, 1.5, (n_types, dim - 8))
    signal_center = np.zeros(dim)
    signal_center[dim - 8 :] = 4.0  # the signal type differs only in the last eight dims
    hazard = np.where(pos_patient, 2.0, 0.5)
    surv_time = rng.exponential(1 / hazard)
    censor = rng.exponential(2.0, n_patients)
    tables, rows = [], []
    for s in range(n_slides):
        p = int(patient_of[s])
        sid = f"S{s:03d}"
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        side = int(np.ceil(np.sqrt(n)))
        grid = np.stack(np.unravel_index(np.arange(n), (side, side)), 1)[:, ::-1]
        xy = grid * TILE
        types = rng.choice(n_types, n, p=rng.dirichlet(np.ones(n_types)))
        emb = centers[types] + rng.normal(0, 0.5, dim) + rng.normal(0, 1.0, (n, dim))
        signal = np.zeros(n, bool)
        frac = 0.0
        if pos_patient[p]:
            k = max(1, int(round(n * rng.uniform(*signal_frac))))
            centre = grid[rng.integers(n)]
            nearest = np.argsort(((grid - centre) ** 2).sum(1), kind="stable")[:k]
            signal[nearest] = True
            emb[nearest] = signal_center + rng.normal(0, 0.5, dim) + rng.normal(0, 1.0, (k, dim))
            frac = k / n
        tables.append(_table(sid, emb, signal, xy))
        rows.append(
            {
                K.SLIDE_ID: sid,
                K.PATIENT_ID: f"P{p:03d}",
                "label": "positive" if pos_patient[p] else "negative",
                "time": float(min(surv_time[p], censor[p])),
                "event": int(surv_time[p] <= censor[p]),
                "signal_frac": frac,
            }
        )
    return MILCohort(tables, pd.DataFrame(rows))


def synthetic_survival_cohort(
    n_slides: int = 90,
    *,
    dim: int = 32,
    tiles: tuple[int, int] = (150, 300),
    max_frac: float = 0.3,
    log_hazard_range: float = 8.0,
    censor_rate: float = 0.1,
    seed: int = 0,
) -> MILCohort:
    """A survival cohort with a known truth: the hazard grows with the signal tiles' share.

    Every slide (one per patient) gets a signal share ``f ~ U(0, max_frac)`` of its tiles (the
    signal type of :func:`synthetic_mil_cohort`, in one blob); its log hazard is
    ``log_hazard_range * (f / max_frac - 0.5)``, its time ``Exp(hazard)``, censored by an
    independent ``Exp(censor_rate)`` time. The best possible risk is ``signal_frac`` (in
    ``labels``); a model that measures the share of signal tiles ranks the times well, one that
    only sees whether the signal is present cannot.

    Example
    -------
    >>> cohort = synthetic_survival_cohort(90, seed=0)
    >>> sorted(cohort.labels.columns)[:3]
    ['event', 'label', 'patient_id']
    """
    rng = np.random.default_rng(seed)
    n_types = 4
    centers = np.zeros((n_types, dim))
    centers[:, : dim - 8] = rng.normal(0, 1.5, (n_types, dim - 8))
    signal_center = np.zeros(dim)
    signal_center[dim - 8 :] = 4.0
    tables, rows = [], []
    for s in range(n_slides):
        sid = f"V{s:03d}"
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        side = int(np.ceil(np.sqrt(n)))
        grid = np.stack(np.unravel_index(np.arange(n), (side, side)), 1)[:, ::-1]
        types = rng.choice(n_types, n, p=rng.dirichlet(np.ones(n_types)))
        emb = centers[types] + rng.normal(0, 0.5, dim) + rng.normal(0, 1.0, (n, dim))
        k = int(round(n * rng.uniform(0, max_frac)))
        nearest = np.argsort(((grid - grid[rng.integers(n)]) ** 2).sum(1), kind="stable")[:k]
        signal = np.zeros(n, bool)
        signal[nearest] = True
        emb[nearest] = signal_center + rng.normal(0, 0.5, dim) + rng.normal(0, 1.0, (k, dim))
        frac = k / n
        hazard = np.exp(log_hazard_range * (frac / max_frac - 0.5))
        t_event, t_censor = rng.exponential(1 / hazard), rng.exponential(1 / censor_rate)
        tables.append(_table(sid, emb, signal, grid * TILE))
        rows.append(
            {
                K.SLIDE_ID: sid,
                K.PATIENT_ID: f"Q{s:03d}",
                "label": "high" if frac > max_frac / 2 else "low",
                "time": float(min(t_event, t_censor)),
                "event": int(t_event <= t_censor),
                "signal_frac": frac,
            }
        )
    return MILCohort(tables, pd.DataFrame(rows))


def write_mil_cohort(cohort: MILCohort, folder: str | os.PathLike[str]) -> tuple[list[Path], Path]:
    """Write ``<folder>/tables/<slide_id>.h5ad`` and ``<folder>/labels.csv``.

    Returns
    -------
    ``(table paths, labels path)``.

    Example
    -------
    >>> paths, labels = write_mil_cohort(synthetic_mil_cohort(20), "cohort/")
    """
    from mmpath.io.table import write_h5ad

    folder = Path(folder)
    paths = []
    for t in cohort.tables:
        sid = str(t.obs[K.SLIDE_ID].iloc[0])
        paths.append(write_h5ad(t, folder / "tables" / f"{sid}.h5ad"))
    labels = folder / "labels.csv"
    cohort.labels.to_csv(labels, index=False)
    return paths, labels
