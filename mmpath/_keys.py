"""Names of every slot mmpath reads or writes in a tile table (AnnData).

Code never spells these as string literals elsewhere: import them from here.
"""

from __future__ import annotations

import re

# obs columns
SLIDE_ID = "slide_id"  # categorical slide identifier
X = "x"  # level-0 pixels, top-left of the tile
Y = "y"
TISSUE_FRAC = "tissue_frac"  # fraction of the tile covered by detected tissue
TILE_OK = "tile_ok"  # False where a tile could not be read (corrupt region)
ANNOTATION = "annotation"  # default obs column of tile labels from polygon annotations

# obsm
SPATIAL = "spatial"  # tile centres in level-0 pixels (scanpy/squidpy convention)
REP_PREFIX = "X_"
PROJ_SUFFIX = "_proj"  # normalised joint image-text space

# uns
UNS = "mmpath"  # all provenance lives under uns["mmpath"]
UNS_VERSION = "version"
UNS_SLIDES = "slides"  # slide_id -> {path, mpp, dims, vendor, tiling: {...}}
UNS_TILING = "tiling"  # per-slide tiling spec inside UNS_SLIDES[slide_id]
UNS_EMBEDDINGS = "embeddings"  # obsm key -> {encoder, weights, data config, version}
UNS_RUNS = "runs"  # step name -> resolved parameters

_SLUG_BAD = re.compile(r"[^a-z0-9_.-]")


def slugify(name: str) -> str:
    """A valid h5ad key fragment for a model name (every char outside [a-z0-9_.-] -> "_")."""
    return _SLUG_BAD.sub("_", name.lower())


def rep_key(slug: str, *, proj: bool = False) -> str:
    """obsm key of an encoder's embedding: ``X_<slug>`` or ``X_<slug>_proj``."""
    return f"{REP_PREFIX}{slug}{PROJ_SUFFIX if proj else ''}"


def obs_name(slide_id: str, i: int) -> str:
    """Unique row name of tile ``i`` of ``slide_id``."""
    return f"{slide_id}:{i}"


# zero-shot classification and probes (mm.tl.zero_shot, mm.tl.linear_probe)
ZS = "zs"  # default key_added: obs["zs"] argmax label, obs["zs_<class>"] probabilities
N_TILES = "n_tiles"  # slide tables: number of tiles pooled into a slide's row
LOGITS = "logits"  # slide tables: layers["logits"], pooled (top-k mean) class logits
PROBE = "probe"  # default key of a linear probe's run record

_CLASS_BAD = re.compile(r"[^a-z0-9]+")


def class_key(prefix: str, name: str) -> str:
    """obs column of one class's score: ``<prefix>_<class>`` with a sanitised class name.

    Lowercase, every run of characters outside ``[a-z0-9]`` becomes one ``_``:
    ``class_key("zs", "Tumor tissue")`` is ``"zs_tumor_tissue"``.
    """
    return class_column(prefix, name)


def class_column(key: str, name: str, measure: str = "", *, layout: str = "rule") -> str:
    """The one naming rule of per-class obs columns: ``<key>_<class>[_<measure>]``.

    ``layout="rule"``: the class sanitised as :func:`class_key` (zero-shot ``zs_tumor``);
    two layouts older than the rule are kept because users read those columns:
    ``"slug"``, the class through :func:`slugify` (segmentation ``seg_stroma_frac``), and
    ``"label"``, ``<key>_<measure>_<label>`` with the label verbatim
    (``annotation_frac_Stroma``).
    """
    if layout == "label":
        return f"{key}_{measure}_{name}" if measure else f"{key}_{name}"
    if layout == "slug":
        slug = slugify(name)
    elif layout == "rule":
        slug = _CLASS_BAD.sub("_", name.lower()).strip("_")
    else:
        raise ValueError(f"layout must be 'rule', 'slug' or 'label', got {layout!r}")
    return f"{key}_{slug}_{measure}" if measure else f"{key}_{slug}"


# spatial transcriptomics (spot tiles; image-to-RNA)
BARCODE = "barcode"  # obs: the spot's barcode in the ST table
SPOT_X = "spot_x"  # obs: spot centre in level-0 pixels (the tile may be shifted at edges)
SPOT_Y = "spot_y"
UNS_EXPRESSION = "expression"  # uns["mmpath"]["expression"]: the model a prediction came from

# embedding step (tl.embed / tl.aggregate)
UNS_AGGREGATE = "aggregate"  # slide tables: how the tile embeddings were pooled

# segmentation and anomaly heads (tl.segment / tl.anomaly / tl.anomaly_knn)
SEG = "seg"  # default key_added of tl.segment: obs["seg_<class>_frac"]
UNS_SEGMENT = "segment"  # uns["mmpath"]["segment"][key]: model, classes, per-slide areas
ANOMALY = "anomaly"  # default key_added of tl.anomaly: obs["anomaly_score"], ...
ANOMALY_KNN = "anomaly_knn"  # default key_added of tl.anomaly_knn: obs["anomaly_knn_score"]
ANOMALY_PATCHCORE = "anomaly_patchcore"  # default key_added of tl.anomaly_patchcore
UNS_ANOMALY = "anomaly"  # uns["mmpath"]["anomaly"][key]: model / bank provenance

# slide-level learning (MIL heads, tl.predict_slides, mm.metrics)
MIL = "mil"  # default key_added of tl.predict_slides: obs["mil"] call, obs["mil_<class>"] probs
MIL_ATTENTION = "mil_attention"  # tile tables: attention of the MIL head per tile
MIL_RISK = "risk"  # slide tables: obs["<key>_risk"], survival models' log-hazard
MIL_VALUE = "value"  # slide tables: obs["<key>_value"], regression models' prediction
UNS_MIL = "mil"  # uns["mmpath"]["mil"][key]: model, task, classes
PATIENT_ID = "patient_id"  # default patient column of label tables
