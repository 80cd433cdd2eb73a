"""The faiss side of :class:`~mmpath.index.TileIndex`: factories, ids, search parameters, GPU.

Only this module and the store talk to faiss structures directly. faiss is imported inside
functions so ``import mmpath`` stays light.

How tile ids are kept (faiss has two id mechanisms and neither fits every index):

* IVF indexes store 64-bit ids natively (``add_with_ids``) and remove by id without touching the
  others, so they are used bare.
* Everything else (Flat, HNSW, IVF with a refine stage, PQ) is wrapped in ``IndexIDMap2``, which
  keeps an ``id_map`` from internal positions to our ids and compacts it on removal. That is only
  right when the inner index compacts too (Flat and flat-code indexes do). ``IndexRefine`` has
  no ``remove_ids``: :func:`_remove_refine` removes in place by hand. Where the inner index
  cannot remove at all (HNSW), removal reconstructs the kept vectors and re-adds them to the
  emptied, already-trained index (no retraining).

Ids are handed out in increasing order and never reused, so ``id_map`` stays sorted; a filter on
an ``IDMap2(IndexRefine)`` is translated to internal positions with ``searchsorted``, because
``IndexRefine`` ignores a top-level selector and only honours one nested in its base parameters
(checked on faiss 1.15).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmpath.errors import IndexError_

log = logging.getLogger(__name__)

#: Up to this many vectors the automatic choice is exact search (``Flat``).
EXACT_MAX = 200_000
#: Above this, the refine stage keeps 8-bit scalar codes (d bytes/vector) instead of the
#: float32 vectors (4*d bytes/vector), so 10^8 tiles fit in RAM (see the README's sizing).
REFINE_FLAT_MAX = 20_000_000
#: Points per centroid in the k-means training sample (faiss warns below 39).
TRAIN_PER_LIST = 64
TRAIN_MAX = 500_000


def faiss():
    """The faiss module, or a clear error when it is missing."""
    try:
        import faiss as _faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise IndexError_("faiss is not installed; `pip install faiss-cpu`") from None
    return _faiss


@dataclass(frozen=True)
class Plan:
    """A factory string plus the query-time parameters that go with it."""

    factory: str
    params: dict[str, Any]


def _pow2(v: float) -> int:
    return int(2 ** round(math.log2(max(v, 1.0))))


def nlist_for(n: int) -> int:
    """IVF list count for ``n`` vectors: a power of two near ``sqrt(n)``, in [16, 65536]."""
    return int(min(65536, max(16, _pow2(math.sqrt(n)))))


def pq_m_for(dim: int) -> int:
    """PQ sub-quantizers for 4-bit fast-scan codes: ``dim / 4`` (dim/8 bytes per vector)."""
    for m in (dim // 4, dim // 2, dim, 64, 32, 16, 8):
        if m > 0 and dim % m == 0 and m % 2 == 0:
            return m
    return dim


def choose(n: int, dim: int, factory: str | None = None) -> Plan:
    """The factory and default search parameters for ``n`` vectors of ``dim`` (or ``factory``).

    Automatic rule (CPU; figures from ``tools/bench/bench_index.py`` on 1M x 512):

    * up to :data:`EXACT_MAX` vectors: exact ``Flat``;
    * up to :data:`REFINE_FLAT_MAX`: ``IVF<~sqrt n>,PQ<d/4>x4fs,RFlat``, 4-bit fast-scan PQ
      shortlists re-ranked with the exact vectors (recall@10 0.96-1.0 at 34-114x Flat's
      batched queries/s, ~2.1 KB/vector at 512-d);
    * above: the same with ``Refine(SQ8)`` (recall@10 0.95-0.99, ~0.6 KB/vector).

    HNSW (``factory="HNSW32,Flat"``) builds ~9x slower per vector than IVF-PQ here, was
    slower at equal recall on one thread, and cannot remove vectors (removal re-adds the
    rest), so it is never picked automatically.
    """
    if factory is None:
        if n <= EXACT_MAX:
            factory = "Flat"
        else:
            refine = "RFlat" if n <= REFINE_FLAT_MAX else "Refine(SQ8)"
            factory = f"IVF{nlist_for(n)},PQ{pq_m_for(dim)}x4fs,{refine}"
    return Plan(factory, default_params(factory))


# The query-time parameters an index takes (faiss ParameterSpace names; k_factor is the
# refinement's). Anything else would be silently ignored by faiss, so it is refused.
QUERY_PARAMS = ("nprobe", "efSearch", "k_factor")


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` as a dict, or an :class:`IndexError_` for unknown names or values that are
    not finite numbers >= 1."""
    out = dict(params or {})
    for name, value in out.items():
        if name not in QUERY_PARAMS:
            raise IndexError_(
                f"unknown query parameter {name!r}; the parameters are {', '.join(QUERY_PARAMS)}"
            )
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 1:
            raise IndexError_(f"query parameter {name} must be a number >= 1, got {value!r}")
    return out


def default_params(factory: str) -> dict[str, Any]:
    """Query-time defaults for a factory string (``nprobe``, ``efSearch``, ``k_factor``)."""
    params: dict[str, Any] = {}
    f = factory.upper()
    if "IVF" in f:
        nlist = _nlist_of(factory)
        params["nprobe"] = int(min(nlist, max(8, min(128, nlist // 32))))
    if "HNSW" in f:
        params["efSearch"] = 128
    if "RFLAT" in f or "REFINE" in f:
        params["k_factor"] = 8
    return params


def _nlist_of(factory: str) -> int:
    import re

    m = re.search(r"IVF(\d+)", factory, flags=re.IGNORECASE)
    return int(m.group(1)) if m else 1


def create(factory: str, dim: int):
    """An empty index for ``factory`` over inner products, wrapped for 64-bit tile ids."""
    fa = faiss()
    try:
        index = fa.index_factory(int(dim), factory, fa.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise IndexError_(
            f"faiss cannot build factory {factory!r} for dim {dim} ({_first_line(err)}); "
            "see https://github.com/facebookresearch/faiss/wiki/The-index-factory"
        ) from None
    if isinstance(fa.downcast_index(index), (fa.IndexIDMap, fa.IndexIDMap2)):
        return index
    if fa.try_extract_index_ivf(index) is not None and not _has_refine(index):
        return index  # IVF stores ids natively
    return fa.IndexIDMap2(index)


def _first_line(err: Exception) -> str:
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def _has_refine(index) -> bool:
    fa = faiss()
    return isinstance(fa.downcast_index(index), fa.IndexRefine)


def inner(index):
    """The index under an IDMap wrapper (or the index itself)."""
    fa = faiss()
    top = fa.downcast_index(index)
    if isinstance(top, (fa.IndexIDMap, fa.IndexIDMap2)):
        return fa.downcast_index(top.index)
    return top


def train_rows(index, n: int, *, seed: int = 0) -> np.ndarray | None:
    """Sorted rows of the seeded training sample among ``n`` vectors (``None``: all of them).

    The same rows are drawn whether the vectors are in memory or read table by table from an
    archive, so both builds train the same quantizer.
    """
    ivf = faiss().try_extract_index_ivf(index)
    per = TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 256)
    n_train = int(min(n, max(per, 10_000), TRAIN_MAX))
    if n_train >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, n_train, replace=False))


def train(index, x: np.ndarray, *, seed: int = 0) -> None:
    """Train ``index`` on a seeded sample of ``x`` (no-op for indexes that need none)."""
    if index.is_trained:
        return
    rows = train_rows(index, len(x), seed=seed)
    fit(index, x if rows is None else x[rows], seed=seed, n_total=len(x))


def fit(index, sample: np.ndarray, *, seed: int = 0, n_total: int | None = None) -> None:
    """Train ``index`` on exactly ``sample`` (drawn by :func:`train_rows`)."""
    if index.is_trained:
        return
    fa = faiss()
    ivf = fa.try_extract_index_ivf(index)
    n_total = len(sample) if n_total is None else n_total
    if ivf is not None:
        ivf.cp.niter = 10  # faiss' default (25) buys little recall for 2.5x the time
        ivf.cp.seed = seed
    _no_polysemous(index)
    log.info("training %s on %d of %d vectors", type(index).__name__, len(sample), n_total)
    try:
        index.train(np.ascontiguousarray(sample, np.float32))
    except RuntimeError as err:
        raise IndexError_(
            f"training the index failed ({_first_line(err)}); with {n_total} vectors use a "
            "smaller factory (fewer IVF lists) or factory='Flat'"
        ) from None


def _no_polysemous(index) -> None:
    """Skip polysemous training (on by default for 8-bit PQ factories: ~40x the PQ training
    time, and it only serves polysemous filtering, which mmpath does not use)."""
    fa = faiss()
    node = fa.downcast_index(index)
    for _ in range(4):
        if hasattr(node, "do_polysemous_training"):
            node.do_polysemous_training = False
        nxt = getattr(node, "index", None) or getattr(node, "base_index", None)
        if nxt is None:
            return
        node = fa.downcast_index(nxt)


def apply_params(index, params: dict[str, Any]) -> None:
    """Set query-time parameters on the index itself (used by raw-faiss comparisons)."""
    fa = faiss()
    ps = fa.ParameterSpace()
    for key, val in (params or {}).items():
        name = (
            "k_factor_rf" if key == "k_factor" and isinstance(inner(index), fa.IndexRefine) else key
        )
        try:
            ps.set_index_parameter(index, name, val)
        except RuntimeError:
            log.debug("index ignores parameter %s", key)


class Selector:
    """An id filter for faiss searches; keeps the SWIG objects alive while in use."""

    def __init__(self, allowed: np.ndarray | None, *, excluded: np.ndarray | None = None) -> None:
        """``allowed``: the ids to accept; or ``None`` and ``excluded``, a bitmap (uint8, bit
        ``i & 7`` of byte ``i >> 3`` set for a rejected id ``i``, :func:`bitmap`)."""
        self.allowed = None if allowed is None else np.ascontiguousarray(allowed, np.int64)
        self.excluded = None if excluded is None else np.ascontiguousarray(excluded, np.uint8)
        self._keep: list[Any] = []
        self.fa = faiss()

    def build(self, ids: np.ndarray | None, universe: np.ndarray | None = None):
        """A selector accepting ``ids`` (internal or external, as given), or every id but
        ``excluded`` when the selector was made with ``allowed=None``."""
        fa = self.fa
        if ids is None:  # tombstones: every id but the excluded ones (a bit test per id
            # scanned: cheaper than IDSelectorBatch's hash, 4% vs 13% on a 200k IVF search)
            base = fa.IDSelectorBitmap(len(self.excluded), fa.swig_ptr(self.excluded))
            sel = fa.IDSelectorNot(base)
            self._keep += [self.excluded, base, sel]
            return sel
        if universe is not None and len(ids) > len(universe) // 2:
            # a wide filter is cheaper as "not the few excluded"
            excluded = np.setdiff1d(universe, ids, assume_unique=True)
            base = fa.IDSelectorBatch(excluded)
            sel = fa.IDSelectorNot(base)
            self._keep += [excluded, base, sel]
            return sel
        ids = np.ascontiguousarray(ids, np.int64)
        sel = fa.IDSelectorBatch(ids)
        self._keep += [ids, sel]
        return sel


def bitmap(ids: np.ndarray) -> np.ndarray:
    """The ``IDSelectorBitmap`` layout of non-negative ``ids``: bit ``i & 7`` of byte ``i >> 3``."""
    ids = np.asarray(ids, np.int64)
    out = np.zeros(int(ids.max()) // 8 + 1 if len(ids) else 0, np.uint8)
    np.bitwise_or.at(out, ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8))
    return out


def search_params(index, params: dict[str, Any], selector: Selector | None, id_map=None):
    """A faiss ``SearchParameters`` tree for ``index`` with ``params`` and an optional filter.

    Returns ``(params_object_or_None, keepalive_list)``.
    """
    fa = faiss()
    keep: list[Any] = []
    top = fa.downcast_index(index)
    wrapped = isinstance(top, (fa.IndexIDMap, fa.IndexIDMap2))
    body = fa.downcast_index(top.index) if wrapped else top
    top_sel = nested_sel = None
    if selector is not None:
        if wrapped and isinstance(body, fa.IndexRefine):
            pos = np.searchsorted(id_map, selector.allowed)
            nested_sel = selector.build(pos, np.arange(len(id_map), dtype=np.int64))
        else:
            top_sel = selector.build(selector.allowed, id_map)
    if not params and selector is None:
        return None, keep

    def make(ix, sel):
        ix = fa.downcast_index(ix)
        if isinstance(ix, fa.IndexRefine):
            base = make(ix.base_index, sel)
            p = fa.IndexRefineSearchParameters()
            p.k_factor = float(params.get("k_factor", 1))
            if base is not None:
                p.base_index_params = base
            keep.append(base)
            return p
        if isinstance(ix, fa.IndexIVF):
            p = fa.SearchParametersIVF()
            p.nprobe = int(params.get("nprobe", ix.nprobe))
        elif isinstance(ix, fa.IndexHNSW):
            p = fa.SearchParametersHNSW()
            p.efSearch = int(params.get("efSearch", ix.hnsw.efSearch))
        else:
            p = fa.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    p = make(body, nested_sel)
    if top_sel is not None:
        p.sel = top_sel
    keep.append(p)
    return p, keep


def id_map_of(index) -> np.ndarray | None:
    """The sorted id array of an IDMap2 index (``None`` for bare IVF)."""
    fa = faiss()
    top = fa.downcast_index(index)
    if isinstance(top, (fa.IndexIDMap, fa.IndexIDMap2)):
        return fa.vector_to_array(top.id_map).astype(np.int64, copy=False)
    return None


def remove(index, ids: np.ndarray) -> int:
    """Remove ``ids`` in place; re-adds the kept vectors where faiss cannot remove."""
    fa = faiss()
    ids = np.ascontiguousarray(ids, np.int64)
    if len(ids) == 0:
        return 0
    sel = fa.IDSelectorBatch(ids)
    if _refine_parts(index) is not None:
        return _remove_refine(index, ids)
    try:
        return int(index.remove_ids(sel))
    except RuntimeError as err:
        if "not implemented" not in str(err):
            raise IndexError_(f"removing from the index failed ({_first_line(err)})") from None
    return readd_without(index, ids)


def readd_without(index, ids: np.ndarray) -> int:
    """Remove ``ids`` by emptying the (trained) index and re-adding the kept vectors."""
    id_map = id_map_of(index)
    if id_map is None:
        raise IndexError_("this index cannot remove vectors; rebuild it with mm.index.build")
    keep = id_map[~np.isin(id_map, ids)]
    log.info(
        "%s cannot remove in place: re-adding %d kept vectors",
        type(inner(index)).__name__,
        len(keep),
    )
    try:
        vectors = index.reconstruct_batch(keep) if len(keep) else None
    except RuntimeError:
        raise IndexError_(
            "this index can neither remove vectors nor give them back; rebuild it with "
            "mm.index.build"
        ) from None
    n_before = index.ntotal
    index.reset()
    if vectors is not None:
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), keep)
    return int(n_before - index.ntotal)


def _refine_parts(index):
    """``(idmap, refine, ivf_base, refine_codes)`` for ``IDMap2(IndexRefine(IVF, flat codes))``
    whose inverted lists expose their ids, else ``None``."""
    fa = faiss()
    top = fa.downcast_index(index)
    if not isinstance(top, fa.IndexIDMap2):
        return None
    body = fa.downcast_index(top.index)
    if not isinstance(body, fa.IndexRefine):
        return None
    base = fa.downcast_index(body.base_index)
    codes = fa.downcast_index(body.refine_index)
    if not isinstance(base, fa.IndexIVF) or not isinstance(codes, fa.IndexFlatCodes):
        return None
    return top, body, base, codes


def _remove_refine(index, ids: np.ndarray) -> int:
    """Remove from ``IDMap2(IndexRefine(IVF, flat codes))`` without re-adding anything.

    faiss cannot do this itself (``IndexRefine`` has no ``remove_ids``). Inside, tiles sit at
    positions 0..n-1: the refine codes are a compact array indexed by position, and the IVF
    lists store positions as their ids. So: drop the positions from the IVF lists and from the
    codes (which compacts them), shift the positions the lists hold down by the number of
    removed positions before each, and compact ``id_map``.
    """
    fa = faiss()
    top, body, base, codes = _refine_parts(index)
    id_map = id_map_of(index)
    gone = np.isin(id_map, ids)
    pos = np.flatnonzero(gone).astype(np.int64)
    if len(pos) == 0:
        return 0
    n_before = int(index.ntotal)
    base.remove_ids(fa.IDSelectorBatch(pos))
    codes.remove_ids(fa.IDSelectorBatch(pos))
    shift = np.cumsum(gone, dtype=np.int64)  # removed positions up to and including each
    invlists = base.invlists
    for lst in range(base.nlist):
        size = invlists.list_size(lst)
        if size:
            stored = fa.rev_swig_ptr(invlists.get_ids(lst), size)
            stored -= shift[stored]
    keep = id_map[~gone]
    top.id_map.clear()
    fa.copy_array_to_vector(keep, top.id_map)
    top.construct_rev_map()
    body.ntotal = top.ntotal = base.ntotal
    if not (base.ntotal == codes.ntotal == len(keep)):
        raise IndexError_("removing from the refine index went wrong; rebuild the index")
    return n_before - len(keep)


def gpu_available() -> bool:
    """True when faiss has GPU support and sees a CUDA device."""
    fa = faiss()
    return hasattr(fa, "StandardGpuResources") and fa.get_num_gpus() > 0


def to_gpu(index, gpu: bool | None):
    """A GPU copy of ``index`` when asked (``True``) or possible (``None``); else ``None``."""
    if gpu is False:
        return None
    if not gpu_available():
        if gpu:
            raise IndexError_(
                "gpu=True but faiss has no GPU support or sees no CUDA device; install "
                "mmpath[gpu] (faiss-gpu) on a CUDA machine, or pass gpu=False"
            )
        return None
    fa = faiss()
    try:
        gpu_index = fa.index_cpu_to_all_gpus(index)
        params = {}
        for name in ("nprobe",):
            ivf = fa.try_extract_index_ivf(index)
            if ivf is not None:
                params[name] = ivf.nprobe
        fa.GpuParameterSpace().set_index_parameters(
            gpu_index, ",".join(f"{k}={v}" for k, v in params.items())
        )
        return gpu_index
    except RuntimeError as err:  # pragma: no cover - needs a GPU
        if gpu:
            raise IndexError_(f"cannot move the index to the GPU ({_first_line(err)})") from None
        log.info("index stays on the CPU: %s", _first_line(err))
        return None
