"""The samples of a MIL run: bags joined to labels, checked before any training starts.

A *sample* is one slide (labels per slide) or one patient (labels per patient: the bags of
the patient's slides are pooled into one). Every problem a cohort can have is one
:class:`~mmpath.errors.DataError` raised here: unlabelled slides, labels of slides not in the
tables, one class only, empty bags (plus what :func:`mmpath.io.bags.build_bag_store` checks:
mixed encoders, NaN embeddings).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpath.errors import ConfigError, DataError
from mmpath.io.bags import BagStore, build_bag_store
from mmpath.io.metadata import _read_table

log = logging.getLogger(__name__)

__all__ = ["MILData", "prepare_mil_data"]


@dataclass
class MILData:
    """Bags and targets of one run (shared by every fold)."""

    store: BagStore
    names: list[str]  # sample ids (slide or patient ids)
    slides: list[tuple[str, ...]]  # the slides pooled into each sample
    groups: np.ndarray  # patient id per sample (folds never split one)
    y: np.ndarray  # class index (int), value (float) or time (float)
    event: np.ndarray | None  # survival: 1 = event observed
    classes: tuple[str, ...]  # classification classes (index = y)
    level: str  # "slide" or "patient"

    def __len__(self) -> int:
        return len(self.names)

    def bag(self, i: int) -> np.ndarray:
        """All tiles of sample ``i`` (its slides' bags, concatenated)."""
        parts = [self.store.bag(s) for s in self.slides[i]]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _labels(data_cfg, source: Any) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if not source:
        raise ConfigError("data.labels: give the label table (CSV/TSV/parquet) of the slides")
    key = data_cfg.slide_col
    return _read_table(Path(source), key)


def _match_slides(labelled, in_tables: set[str]) -> list[str]:
    """The tables' slides without a label; a DataError for labels of slides not in them."""
    unknown = sorted(set(labelled) - in_tables)
    if unknown:
        raise DataError(
            f"{len(unknown)} labelled slide(s) are not in the tile tables (e.g. "
            f"{unknown[:5]}); add their tables or drop their labels"
        )
    return sorted(in_tables - set(labelled))


def check_survival_batch(task: str, batch_size: int) -> None:
    """Cox's partial likelihood ranks the bags of a batch: survival needs two or more."""
    if task == "survival" and batch_size < 2:
        raise ConfigError(
            "survival trains on the Cox partial likelihood, which ranks the bags of a batch: "
            "set train.batch_size >= 2 (e.g. 16)"
        )


def prepare_mil_data(
    cfg, *, tables: Any = None, labels: Any = None, cache: str | Path | None = None
) -> MILData:
    """Build (or reuse) the bag cache and join the labels; every check runs here.

    ``cfg`` is a :class:`~mmpath.train.tasks.mil.MILRunConfig`; ``tables`` / ``labels``
    override ``cfg.data.tables`` / ``cfg.data.labels`` (in-memory AnnData / DataFrame).
    """
    d = cfg.data
    if not d.use_rep:
        raise ConfigError("data.use_rep: name the obsm key of the tile embeddings (e.g. X_uni)")
    table_src = tables if tables is not None else list(d.tables)
    if not table_src and not hasattr(table_src, "obs"):
        raise ConfigError("data.tables: give the tile tables (.h5ad files, globs or a folder)")
    lab = _labels(d, labels if labels is not None else d.labels)
    folder = Path(cache or d.cache or Path(cfg.out) / "bags")
    store = build_bag_store(table_src, folder, use_rep=d.use_rep)
    return _join(d, store, lab)


def _join(d, store: BagStore, lab: pd.DataFrame) -> MILData:
    level = d.level
    has_slide = d.slide_col in lab.columns
    has_patient = bool(d.patient_col) and d.patient_col in lab.columns
    if d.patient_col and d.patient_col not in lab.columns and (level == "patient" or not has_slide):
        raise DataError(f"the label table has no column {d.patient_col!r} (data.patient_col)")
    if level == "auto":
        level = "slide" if has_slide else "patient"
    if level == "slide" and not has_slide:
        raise DataError(f"the label table has no column {d.slide_col!r} (data.slide_col)")
    need = [d.time, d.event] if d.task == "survival" else [d.label]
    missing = [c for c in need if c not in lab.columns]
    if missing:
        raise DataError(f"the label table has no column(s) {missing}; columns: {list(lab.columns)}")
    lab = lab.dropna(subset=need).copy()
    in_tables = set(store.slides)
    if level == "slide":
        lab[d.slide_col] = lab[d.slide_col].astype(str)
        if lab[d.slide_col].duplicated().any():
            dup = lab.loc[lab[d.slide_col].duplicated(), d.slide_col].tolist()[:5]
            raise DataError(f"slides labelled twice in the label table: {dup}")
        unlabelled = _match_slides(lab[d.slide_col], in_tables)
        names = lab[d.slide_col].tolist()
        slides = [(s,) for s in names]
        groups = (lab[d.patient_col].astype(str) if has_patient else lab[d.slide_col]).to_numpy()
    else:
        if not has_patient:
            raise DataError("labels per patient need data.patient_col naming the patient column")
        if not has_slide:
            raise DataError(
                f"labels per patient need each slide's patient: add a {d.slide_col!r} column "
                "(one row per slide, the patient's label repeated)"
            )
        lab[d.slide_col] = lab[d.slide_col].astype(str)
        lab[d.patient_col] = lab[d.patient_col].astype(str)
        unlabelled = _match_slides(lab[d.slide_col], in_tables)
        per = lab.groupby(d.patient_col, sort=False)
        conflict = [p for p, g in per if len(g[need].drop_duplicates()) > 1]
        if conflict:
            raise DataError(f"patients with conflicting labels across their slides: {conflict[:5]}")
        names = list(per.groups)
        slides = [tuple(per.get_group(p)[d.slide_col]) for p in names]
        lab = per.head(1).set_index(d.patient_col).loc[names].reset_index()
        groups = np.asarray(names)
    if unlabelled:
        msg = f"{len(unlabelled)} slide(s) in the tables have no label (e.g. {unlabelled[:5]})"
        if d.unlabelled == "error":
            raise DataError(f"{msg}; label them, or set data.unlabelled=skip to leave them out")
        log.warning("%s: left out (data.unlabelled=skip)", msg)
    empty = [s for ss in slides for s in ss if store.n_tiles(s) == 0]
    if empty:
        raise DataError(
            f"slide(s) {empty[:5]} have zero tiles (an empty bag); re-tile them or drop "
            "their labels"
        )
    if not names:
        raise DataError("no labelled slide is in the tile tables")
    event = None
    classes: tuple[str, ...] = ()
    if d.task == "classification":
        values = lab[d.label].astype(str)
        classes = tuple(d.classes) or tuple(sorted(values.unique()))
        extra = sorted(set(values) - set(classes))
        if extra:
            raise DataError(f"labels {extra} are not in data.classes {list(classes)}")
        if values.nunique() < 2:
            raise DataError(
                f"every labelled sample has the class {values.iloc[0]!r}: a classifier needs "
                "at least two classes"
            )
        y = np.array([classes.index(v) for v in values], dtype=np.int64)
    elif d.task == "regression":
        y = pd.to_numeric(lab[d.label], errors="coerce").to_numpy(float)
        if not np.isfinite(y).all():
            raise DataError(
                f"column {d.label!r} holds non-numeric values; regression needs numbers"
            )
        if np.std(y) == 0:
            raise DataError(f"column {d.label!r} is constant; nothing to regress")
    else:
        y = pd.to_numeric(lab[d.time], errors="coerce").to_numpy(float)
        event = pd.to_numeric(lab[d.event], errors="coerce").to_numpy(float)
        if not (np.isfinite(y).all() and np.isin(event, (0, 1)).all()):
            raise DataError(f"survival needs numeric {d.time!r} and 0/1 {d.event!r} columns")
        if event.sum() < 2:
            raise DataError("survival needs at least two observed events")
        event = event.astype(np.int64)
    log.info("MIL cohort: %d %ss from %d slides", len(names), level, sum(map(len, slides)))
    return MILData(store, [str(n) for n in names], slides, groups, y, event, classes, level)
