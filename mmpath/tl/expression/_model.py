"""The fitted expression model: array-level fitting per method, prediction, save/load.

A saved model is a folder in the one model-folder format (:mod:`mmpath.models.folder`),
written atomically::

    config.yaml           format: mmpath-expression, kind (= method), the predicted genes in
                          output order, genes spec, target processing, embedding key/encoder,
                          fusion, genomic columns, hyper-parameters, mmpath version, sha256
    model.safetensors     every fitted array (PCA, ridge, torch state, references)
    scores.csv, summary.csv, pearson.png   the cross-validation report, when one was made

Folders written before the one format (``config.json`` + ``genes.txt`` +
``weights.safetensors``) still load.

Weights hold plain arrays (safetensors), so loading never unpickles code. The ridge model is
fitted with scikit-learn (``Pipeline(PCA(256), Ridge)``, the HEST-Benchmark protocol) and
stored as its arrays; prediction applies the same affine maps (tests check it equals the
pipeline's ``predict``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmpath._version import __version__
from mmpath.errors import ConfigError, DataError
from mmpath.io._atomic import atomic_path, recover

log = logging.getLogger(__name__)

METHODS = ("ridge", "mlp", "contrastive")
FUSIONS = (None, "concat", "gated")

# Defaults per method; unknown keys in params= are an error.
DEFAULTS: dict[str, dict[str, Any]] = {
    # HEST-Benchmark: PCA to 256 dims, ridge with alpha = 100 / (n_features * n_genes).
    "ridge": {"n_components": 256, "alpha": "hest"},
    "mlp": {
        "hidden": 256,
        "dropout": 0.1,
        "epochs": 100,
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 1e-4,
    },
    "contrastive": {
        "dim": 128,
        "temperature": 0.1,
        "top_k": 50,
        "dropout": 0.1,
        "epochs": 100,
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 1e-4,
    },
}
FORMAT = "mmpath-expression"
# the layout written before the one model-folder format (still read)
CONFIG_FILE, GENES_FILE, WEIGHTS_FILE = "config.json", "genes.txt", "weights.safetensors"
MODEL_FILES = (CONFIG_FILE, GENES_FILE, WEIGHTS_FILE)


def check_save_target(path) -> None:
    """Refuse a non-empty folder that is not an expression model (saving replaces it whole)."""
    from mmpath.models.folder import check_replaceable_model

    check_replaceable_model(path, FORMAT, "expression model")


def resolve_params(method: str, fusion: str | None, params: dict | None) -> dict[str, Any]:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; use None, 'concat' or 'gated'")
    if fusion == "gated" and method != "mlp":
        raise ConfigError("fusion='gated' is a learned head: use it with method='mlp'")
    if fusion is not None and method == "contrastive":
        raise ConfigError("fusion is not supported with method='contrastive'; use ridge or mlp")
    out = dict(DEFAULTS[method])
    unknown = set(params or {}) - set(out) - {"seed"}
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {sorted(unknown)} for method {method!r}; known: {sorted(out)}"
        )
    for key, value in (params or {}).items():
        out[key] = value if key == "seed" else _check_param(method, key, value, out[key])
    out.setdefault("seed", 0)
    return out


def _check_param(method: str, key: str, value: Any, default: Any) -> Any:
    """``value`` of the default's type (a numeric string such as YAML's ``1e-3`` converts)."""
    if key == "alpha" and value == "hest":
        return value
    want = float if isinstance(default, float) or key == "alpha" else int
    if isinstance(value, str) and value.strip():
        try:
            value = want(float(value)) if want is int and float(value).is_integer() else want(value)
        except ValueError:
            raise ConfigError(
                f"parameter {key}={value!r} of method {method!r} must be a positive number"
            ) from None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and want is int:
        ok = float(value).is_integer()
    if not ok or not np.isfinite(value) or value < 0 or (value == 0 and key != "dropout"):
        kind = "a positive integer" if want is int else "a positive number"
        if key == "dropout":
            kind = "a number in [0, 1)"
        raise ConfigError(f"parameter {key}={value!r} of method {method!r} must be {kind}")
    if key == "dropout" and value >= 1:
        raise ConfigError(f"parameter dropout={value!r} of method {method!r} must be in [0, 1)")
    return want(value)


def _standardize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def ridge_pipeline(
    n_features: int, n_samples: int, n_genes: int, params: dict, *, n_genomic: int = 0
):
    """The scikit-learn pipeline of the ridge method (image columns first, then genomic)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(params["n_components"], n_features, n_samples))
    alpha = params["alpha"]
    if alpha == "hest":
        alpha = 100.0 / ((k + n_genomic) * n_genes)
    pca = PCA(n_components=k, random_state=params["seed"])
    if n_genomic:
        img = list(range(n_features))
        gen = list(range(n_features, n_features + n_genomic))
        features = ColumnTransformer([("pca", pca, img), ("genomic", StandardScaler(), gen)])
    else:
        features = pca
    return Pipeline([("features", features), ("ridge", Ridge(alpha=float(alpha)))])


@dataclass
class ExpressionModel:
    """A fitted image-to-expression model (see :func:`mmpath.tl.fit_expression`).

    Attributes
    ----------
    method
        ``"ridge"``, ``"mlp"`` or ``"contrastive"``.
    genes
        Predicted genes, in output order.
    use_rep
        obsm key of the embeddings it reads (``X_<encoder slug>``).
    encoder
        Encoder that made those embeddings (from their provenance), if known.
    targets
        How targets were made (normalisation, log1p, gene spec).
    fusion
        ``None``, ``"concat"`` or ``"gated"``.
    genomic_columns
        Names of the genomic vector's dimensions (fusion only).
    params
        Resolved hyper-parameters.
    state
        Fitted arrays.
    estimator
        The in-memory scikit-learn pipeline (ridge, not persisted: rebuilt from ``state``).
    """

    method: str
    genes: list[str]
    use_rep: str
    encoder: str | None
    targets: dict[str, Any]
    fusion: str | None = None
    genomic_columns: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    history: list[float] = field(default_factory=list, repr=False)
    estimator: Any = field(default=None, repr=False, compare=False)

    # -- fitting on arrays ------------------------------------------------------------------
    @classmethod
    def fit_arrays(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        G: np.ndarray | None = None,
        *,
        method: str,
        fusion: str | None,
        params: dict[str, Any],
        **meta: Any,
    ) -> ExpressionModel:
        """Fit on embeddings ``X``, targets ``Y`` and (fusion) per-row genomic ``G``."""
        model = cls(method=method, fusion=fusion, params=params, **meta)
        X = np.asarray(X, np.float32)
        if fusion is not None and G is None:
            raise DataError(f"fusion={fusion!r} needs genomic= vectors")
        if fusion is None:
            G = None
        getattr(model, f"_fit_{method}")(X, Y, G)
        return model

    def _fit_ridge(self, X, Y, G):
        n_gen = 0 if G is None else G.shape[1]
        pipe = ridge_pipeline(X.shape[1], X.shape[0], Y.shape[1], self.params, n_genomic=n_gen)
        pipe.fit(X if G is None else np.hstack([X, G]), Y)
        self.estimator = pipe
        feats = pipe.named_steps["features"]
        pca = feats.named_transformers_["pca"] if n_gen else feats
        ridge = pipe.named_steps["ridge"]
        self.state = {
            "pca_mean": pca.mean_,
            "pca_components": pca.components_,
            # sklearn drops the target axis of a one-gene fit: keep (n_genes, n_features).
            "coef": np.reshape(ridge.coef_, (Y.shape[1], -1)),
            "intercept": np.atleast_1d(ridge.intercept_),
        }
        if n_gen:
            sc = feats.named_transformers_["genomic"]
            self.state.update(gen_mean=sc.mean_, gen_scale=sc.scale_)
        self.state = {k: np.asarray(v, np.float64) for k, v in self.state.items()}

    def _torch_inputs(self, X, G):
        x = (X - self.state["x_mean"]) / self.state["x_std"]
        g = None if G is None else (G - self.state["g_mean"]) / self.state["g_std"]
        return x.astype(np.float32), None if g is None else g.astype(np.float32)

    def _build(self, d_img: int, d_gen: int, n_genes: int):
        from mmpath.models.heads import heads  # importing the package registers the entries

        p = self.params
        if self.method == "contrastive":
            return heads.create(
                "expr-contrastive",
                d_img=d_img,
                n_genes=n_genes,
                dim=p["dim"],
                temperature=p["temperature"],
                dropout=p["dropout"],
            )
        if self.fusion == "gated":
            return heads.create(
                "expr-gated",
                d_img=d_img,
                d_gen=d_gen,
                d_out=n_genes,
                hidden=p["hidden"],
                dropout=p["dropout"],
            )
        return heads.create(
            "expr-mlp", d_in=d_img + d_gen, d_out=n_genes, hidden=p["hidden"], dropout=p["dropout"]
        )

    def init_torch(self, X, Y, G):
        """Standardise inputs/targets (stored in ``state``) and build the untrained module.

        Returns ``(module, x, g, y)`` with standardised float32 arrays; the training task
        (:class:`mmpath.train.tasks.expr.ExprHeadTask`) uses this and :meth:`finish_torch`
        around the one loop.
        """
        return self._fit_torch_common(X, Y, G)

    def finish_torch(self, module, Y, y) -> None:
        """Store the trained module's weights (and, for contrastive, the reference spots)."""
        from mmpath.models.heads import expression as H

        module.eval()
        for k, v in H.state_to_numpy(module).items():
            self.state[f"module.{k}"] = v
        if self.method == "contrastive":
            # Reference spots: their expression embeddings and their unstandardised expression.
            self.state["ref_embeddings"] = H.run(lambda t: _unit(module.expr(t)), [y])
            self.state["ref_expression"] = np.asarray(Y, np.float32)

    def _fit_torch_common(self, X, Y, G):
        import torch

        self.state = {}
        self.state["x_mean"], self.state["x_std"] = _standardize(X)
        if G is not None:
            self.state["g_mean"], self.state["g_std"] = _standardize(G)
        self.state["y_mean"], self.state["y_std"] = _standardize(Y)
        torch.manual_seed(self.params["seed"])
        x, g = self._torch_inputs(X, G)
        y = ((Y - self.state["y_mean"]) / self.state["y_std"]).astype(np.float32)
        module = self._build(X.shape[1], 0 if G is None else G.shape[1], Y.shape[1])
        return module, x, g, y

    def _fit_mlp(self, X, Y, G):
        from mmpath.train.tasks.expr import fit_in_memory

        self.history = fit_in_memory(self, X, Y, G)

    def _fit_contrastive(self, X, Y, G):
        from mmpath.train.tasks.expr import fit_in_memory

        self.history = fit_in_memory(self, X, Y, None)

    # -- prediction ---------------------------------------------------------------------------
    def _module(self):
        from mmpath.models.heads import expression as H

        d_img = self.state["x_mean"].shape[0]
        d_gen = self.state["g_mean"].shape[0] if "g_mean" in self.state else 0
        module = self._build(d_img, d_gen, len(self.genes))
        state = {k[len("module.") :]: v for k, v in self.state.items() if k.startswith("module.")}
        return H.load_numpy_state(module, state)

    def predict_arrays(
        self, X: np.ndarray, G: np.ndarray | None = None, *, batch_size: int = 8192
    ) -> np.ndarray:
        """Predicted expression ``(n, n_genes)`` float32 for embeddings ``X`` (+ genomic ``G``)."""
        X = np.asarray(X, np.float32)
        d = (
            self.state["pca_mean"].shape[0]
            if self.method == "ridge"
            else self.state["x_mean"].shape[0]
        )
        if X.ndim != 2 or X.shape[1] != d:
            raise DataError(
                f"embeddings have {X.shape[-1]} dims but the model was fitted on {d}-d "
                f"{self.use_rep!r}; embed the tiles with the same encoder "
                f"({self.encoder or 'see the model config'})"
            )
        if self.fusion is not None and G is None:
            raise DataError(f"this model fuses a genomic vector ({self.fusion}); pass genomic=")
        if self.method == "ridge":
            return self._predict_ridge(X, G if self.fusion else None, batch_size)
        from mmpath.models.heads import expression as H

        module = self._module()
        x, g = self._torch_inputs(X, G if self.fusion else None)
        if self.method == "contrastive":
            return self._predict_contrastive(module, x, batch_size)
        y = H.run(module, [x] if g is None else [x, g], batch_size)
        return (y * self.state["y_std"] + self.state["y_mean"]).astype(np.float32)

    def _predict_ridge(self, X, G, batch_size):
        s = self.state
        out = np.empty((len(X), len(self.genes)), np.float32)
        for a in range(0, len(X), batch_size):
            z = (X[a : a + batch_size] - s["pca_mean"]) @ s["pca_components"].T
            if G is not None:
                z = np.hstack([z, (G[a : a + batch_size] - s["gen_mean"]) / s["gen_scale"]])
            coef = s["coef"].reshape(len(self.genes), -1)
            out[a : a + batch_size] = z @ coef.T + s["intercept"]
        return out

    def _predict_contrastive(self, module, x, batch_size):
        from mmpath.models.heads import expression as H

        ref = self.state["ref_embeddings"]
        expr = self.state["ref_expression"]
        k = int(min(self.params["top_k"], len(ref)))
        out = np.empty((len(x), expr.shape[1]), np.float32)
        for a in range(0, len(x), batch_size):
            q = H.run(lambda t: _unit(module.image(t)), [x[a : a + batch_size]])
            sims = q @ ref.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            out[a : a + batch_size] = expr[top].mean(axis=1)
        return out

    # -- persistence ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("state", "history", "estimator", "genes")
        }
        cfg["n_genes"] = len(self.genes)
        cfg["mmpath_version"] = __version__
        return cfg

    def save(self, path: str | os.PathLike[str], *, report=None) -> Path:
        """Write the model folder atomically (see the module docstring); returns its path.

        ``report`` is a scores table from :func:`mmpath.tl.evaluate_expression`, written as
        ``scores.csv``/``summary.csv``/``pearson.png`` inside the folder.
        """
        path = Path(path)
        check_save_target(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            self.write_into(tmp, report=report)
        log.info("expression model saved to %s", path)
        return path

    def write_into(self, folder: Path, *, report=None) -> None:
        """Write the model files into an existing (temporary) folder; :meth:`save` is atomic."""
        from mmpath.models.folder import write_model_folder

        config = {"kind": self.method, **self.config(), "genes": list(self.genes)}
        config.pop("mmpath_version")
        write_model_folder(folder, FORMAT, _plain(config), self.state)
        if report is not None:
            from mmpath.tl.expression._report import write_report

            write_report(report, folder)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExpressionModel:
        """Read a model folder written by :meth:`save` (or by an older version)."""
        from mmpath.errors import WeightsError
        from mmpath.models.folder import folder_format, read_model_folder

        path = Path(path)
        recover(path)  # a save killed between its two renames
        if folder_format(path) != FORMAT and folder_format(path / "model") == FORMAT:
            path = path / "model"  # a `mmpath train expr` run folder: its model/ sub-folder
        if folder_format(path) != FORMAT:
            raise DataError(
                f"{str(path)!r} is not an expression model folder (no config.yaml of format "
                f"{FORMAT}, nor the older {', '.join(MODEL_FILES)}); make one with "
                "`mmpath expr fit` or ExpressionModel.save"
            )
        try:
            stored = read_model_folder(path, FORMAT)
        except WeightsError as err:
            raise DataError(str(err)) from None
        cfg = stored.config
        if stored.legacy:
            genes = [g for g in (path / GENES_FILE).read_text().splitlines() if g]
        else:
            genes = [str(g) for g in cfg["genes"]]
        known = {"method", "use_rep", "encoder", "targets", "fusion", "genomic_columns", "params"}
        model = cls(genes=genes, **{k: v for k, v in cfg.items() if k in known})
        model.state = stored.tensors("np")
        return model


def _plain(obj: Any) -> Any:
    """YAML-safe plain values (numpy scalars and tuples become Python scalars and lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # as the JSON config did (default=str)


def _unit(t):
    import torch.nn.functional as F

    return F.normalize(t, dim=-1)
