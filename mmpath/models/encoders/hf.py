"""transformers encoders: CLIPModel (PLIP), ViT/Dinov2 image towers (Phikon), text towers (MiniLM).

Each family builds its module from a transformers config (a pinned dict for registry entries,
or a folder's ``config.json``) with random weights, then reads a checkpoint strictly. Legacy
persistent buffers (``*.position_ids``) and poolers the card does not use are dropped; a
base-model prefix (``vit.``, ``bert.``...) is stripped. Tokenizers come from the weights folder
(``AutoTokenizer``); a CLIP model without tokenizer files falls back to CLIP's BPE bundled
with open_clip (same vocabulary as OpenAI CLIP).

Features: CLIP ``get_image_features`` (projected, unnormalised; transformers 5.x returns an
output object whose ``.pooler_output`` holds it); ViT/Dinov2 the CLS token of the last hidden
state (Phikon's card); text towers the attention-masked mean of token embeddings
(sentence-transformers), normalised.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from mmpath.errors import ModelError, WeightsError
from mmpath.io._digest import sha256_file
from mmpath.models.base import (
    CLIP_MEAN,
    CLIP_STD,
    DataConfig,
    Encoder,
    EncoderInfo,
    ImageEmbedding,
    Tokens,
)
from mmpath.models.encoders._common import clip_bpe_tokenize, l2n, pick_indices, tokens_to_maps
from mmpath.models.registry import families
from mmpath.models.weights import _pick_file, load_strict

__all__ = ["HFClipEncoder", "HFVisionEncoder", "HFTextEncoder", "hf_config"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def hf_config(source: str | Path | dict[str, Any]) -> transformers.PretrainedConfig:
    """A transformers config from a folder (``config.json``) or a dict with ``model_type``."""
    if isinstance(source, dict):
        data = dict(source)
        return transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    return transformers.AutoConfig.from_pretrained(str(source), local_files_only=True)


def _output(value: Any) -> torch.Tensor:
    """transformers 5.x returns output objects from get_*_features; 4.x returns tensors."""
    if torch.is_tensor(value):
        return value
    return value.pooler_output


def _load_tokenizer(folder: Path) -> Any | None:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


class _HFBase(Encoder):
    tokenizer: Any = None
    _model_kwargs: dict[str, Any] = {}  # noqa: RUF012 - read-only default

    def _adapt(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = self.model.state_dict()
        prefix = getattr(self.model, "base_model_prefix", "")
        if prefix and not any(k in own for k in state):
            stripped = {k.removeprefix(f"{prefix}."): v for k, v in state.items()}
            if any(k in own for k in stripped):
                state = stripped
        drop = (".position_ids", "pooler.")
        return {
            k: v
            for k, v in state.items()
            if k in own or not (k.endswith(drop[0]) or k.startswith(drop[1]))
        }

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        load_strict(self.model, self._adapt(state_dict), name=self.info.name)

    def load_pretrained(self, location: Path, *, sha256: str | None = None) -> None:
        """Weights (and the tokenizer, when the folder has one) from a file or folder.

        Loading goes through ``from_pretrained`` with the pinned config, so checkpoints saved
        by older transformers (other parameter names, sharded files) are converted the way
        transformers itself does; missing or mis-shaped weights raise WeightsError.
        """
        location = Path(location)
        with tempfile.TemporaryDirectory() as tmp:
            folder = location
            if not location.is_dir():
                folder = Path(tmp)
                suffix = ".safetensors" if location.suffix == ".safetensors" else ".bin"
                name = "model.safetensors" if suffix == ".safetensors" else "pytorch_model.bin"
                (folder / name).symlink_to(location.resolve())
            files = _pick_file(folder, ())
            if sha256 and len(files) == 1 and sha256_file(files[0]) != sha256.lower():
                raise WeightsError(f"sha256 of {files[0]} does not match; download it again")
            verbosity = transformers.logging.get_verbosity()
            bar = transformers.utils.logging.is_progress_bar_enabled()
            transformers.logging.set_verbosity_error()  # its own load report is too loud
            transformers.utils.logging.disable_progress_bar()  # and so is its bar
            try:
                model, report = type(self.model).from_pretrained(
                    str(folder),
                    config=self.model.config,
                    output_loading_info=True,
                    local_files_only=True,
                    dtype=torch.float32,
                    **self._model_kwargs,
                )
            except Exception as err:  # noqa: BLE001 - corrupt / wrong files: one clear error
                msg = str(err).strip().splitlines()[0][:200] if str(err) else type(err).__name__
                if "mismatch" in msg:
                    msg = "tensor shapes do not match the architecture (a different model?)"
                raise WeightsError(
                    f"cannot load weights for {self.info.name!r} from {location}: {msg}"
                ) from None
            finally:
                transformers.logging.set_verbosity(verbosity)
                if bar:
                    transformers.utils.logging.enable_progress_bar()
        bad = sorted(report.get("missing_keys", [])) + [
            str(m) for m in report.get("mismatched_keys", [])
        ]
        if bad:
            raise WeightsError(
                f"weights in {location} do not match encoder {self.info.name!r}: "
                f"{len(bad)} missing or mis-shaped tensors ({', '.join(bad[:3])}...). "
                "Are these the weights of a different model?"
            )
        self.model = model.eval()
        if location.is_dir():
            tok = _load_tokenizer(location)
            if tok is not None:
                self.tokenizer = tok

    def _export_folder(self, root: Path, sub: str) -> str:
        folder = root / (sub or "hf")
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(folder))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        return f"./{sub or 'hf'}"

    def _hf_tokenize(self, texts: Sequence[str], max_length: int) -> Tokens:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return Tokens(enc["input_ids"], enc["attention_mask"])


class HFClipEncoder(_HFBase):
    """A transformers ``CLIPModel`` (PLIP's format).

    Example
    -------
    >>> enc = HFClipEncoder(config={"model_type": "clip"})  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: dict[str, Any] | None = None,
        info: EncoderInfo | None = None,
    ) -> None:
        super().__init__()
        cfg = hf_config(path if path is not None else config or {"model_type": "clip"})
        self.model = transformers.CLIPModel(cfg)
        if path is not None:
            self.tokenizer = _load_tokenizer(Path(path))
        vc = cfg.vision_config
        dim = int(cfg.projection_dim)
        self.context_length = int(cfg.text_config.max_position_embeddings)
        self.info = info or EncoderInfo(
            name="hf_clip",
            kind="image-text",
            embed_dim=dim,
            proj_dim=dim,
            data=DataConfig(input_size=int(vc.image_size), mean=CLIP_MEAN, std=CLIP_STD, mpp=None),
            pooling="clip",
            source="transformers CLIPModel",
            slug="hf_clip",
        )
        self._config = config

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        feats = _output(self.model.get_image_features(pixel_values=x))
        return ImageEmbedding(feats, l2n(feats))

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.tokenizer is not None:
            return self._hf_tokenize(texts, self.context_length)
        return clip_bpe_tokenize(texts, self.context_length)

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        return _output(
            self.model.get_text_features(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            )
        )

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        vm = self.model.vision_model
        out = vm(pixel_values=x, output_hidden_states=True)
        hidden = out.hidden_states[1:]  # [0] is the embedding output
        idx = pick_indices(len(hidden), indices)
        patch = self.model.config.vision_config.patch_size
        grid = (x.shape[-2] // patch, x.shape[-1] // patch)
        return tokens_to_maps([hidden[i] for i in idx], 1, grid)

    def export(self, root: Path, sub: str) -> dict[str, Any]:
        return {"family": "hf_clip", "kwargs": {"path": self._export_folder(root, sub)}}


class HFVisionEncoder(_HFBase):
    """A transformers ViT/Dinov2 image model; features = CLS token of the last layer.

    Example
    -------
    >>> enc = HFVisionEncoder(config={"model_type": "vit", "hidden_size": 32,
    ...     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
    ...     "image_size": 32, "patch_size": 16})
    >>> enc.encode_image(torch.zeros(1, 3, 32, 32)).features.shape
    torch.Size([1, 32])
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: dict[str, Any] | None = None,
        info: EncoderInfo | None = None,
        data: dict[str, Any] | None = None,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "cls+mean"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.pooling = pooling
        cfg = hf_config(path if path is not None else config)
        kwargs = {"add_pooling_layer": False} if cfg.model_type == "vit" else {}
        self.model = transformers.AutoModel.from_config(cfg, **kwargs)
        self._model_kwargs = kwargs
        self.n_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        self.info = info or EncoderInfo(
            name=f"hf_{cfg.model_type}",
            kind="image",
            embed_dim=int(cfg.hidden_size) * (2 if pooling == "cls+mean" else 1),
            data=DataConfig(input_size=int(size), **(data or {})),
            pooling=pooling,
            source=f"transformers {type(self.model).__name__}",
            slug=f"hf_{cfg.model_type}",
        )

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        tokens = self.model(pixel_values=x).last_hidden_state
        if self.pooling == "cls+mean":  # class token + mean of the patch tokens (Midnight)
            feats = torch.cat([tokens[:, 0], tokens[:, self.n_prefix :].mean(dim=1)], dim=-1)
            return ImageEmbedding(feats, None)
        return ImageEmbedding(tokens[:, 0], None)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] = 4
    ) -> list[torch.Tensor]:
        out = self.model(pixel_values=x, output_hidden_states=True)
        hidden = out.hidden_states[1:]
        idx = pick_indices(len(hidden), indices)
        patch = self.model.config.patch_size
        grid = (x.shape[-2] // patch, x.shape[-1] // patch)
        return tokens_to_maps([hidden[i] for i in idx], self.n_prefix, grid)

    def export(self, root: Path, sub: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"path": self._export_folder(root, sub)}
        if self.pooling != "cls":
            kwargs["pooling"] = self.pooling
        return {"family": "hf_vision", "kwargs": kwargs}


class HFTextEncoder(_HFBase):
    """A transformers text model with attention-masked mean pooling (sentence-transformers).

    Example
    -------
    >>> enc = HFTextEncoder("/path/to/all-MiniLM-L6-v2")  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        config: dict[str, Any] | None = None,
        info: EncoderInfo | None = None,
        max_length: int = 256,
    ) -> None:
        super().__init__()
        cfg = hf_config(path if path is not None else config)
        kwargs = {"add_pooling_layer": False} if cfg.model_type in ("bert", "roberta") else {}
        self.model = transformers.AutoModel.from_config(cfg, **kwargs)
        self._model_kwargs = kwargs
        if path is not None:
            self.tokenizer = _load_tokenizer(Path(path))
        self.max_length = int(max_length)
        self.info = info or EncoderInfo(
            name=f"hf_text_{cfg.model_type}",
            kind="text",
            embed_dim=int(cfg.hidden_size),
            pooling="mean",
            source=f"transformers {type(self.model).__name__}",
            slug="hf_text",
        )

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.tokenizer is None:
            raise ModelError(
                f"encoder {self.info.name!r} has no tokenizer: load it from its model folder "
                "(create_encoder(name, weights=FOLDER))"
            )
        return self._hf_tokenize(texts, self.max_length)

    def text_features(self, tokens: Tokens) -> torch.Tensor:
        mask = tokens.attention_mask
        if mask is None:
            mask = torch.ones_like(tokens.input_ids)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return l2n(self.text_features(tokens))

    def export(self, root: Path, sub: str) -> dict[str, Any]:
        return {
            "family": "hf_text",
            "kwargs": {"path": self._export_folder(root, sub), "max_length": self.max_length},
        }


@families.register("hf_clip")
def hf_clip_family(path: str | None = None, *, config: dict[str, Any] | None = None):
    """A transformers CLIPModel from a folder or config dict (random init)."""
    return HFClipEncoder(path, config=config)


@families.register("hf_vision")
def hf_vision_family(
    path: str | None = None, *, config: dict[str, Any] | None = None, pooling: str = "cls"
):
    """A transformers ViT/Dinov2 model from a folder or config dict (random init)."""
    return HFVisionEncoder(path, config=config, pooling=pooling)


@families.register("hf_text")
def hf_text_family(
    path: str | None = None, *, config: dict[str, Any] | None = None, max_length: int = 256
):
    """A transformers text model from a folder or config dict (random init)."""
    return HFTextEncoder(path, config=config, max_length=max_length)
