"""models/registry.py (entries, no torch) vs models/factory.py (building); one resolver;
the zero-shot logit scale on the encoder contract; one default_num_workers."""

from __future__ import annotations

import ast
import math

import pytest
import torch

import mmpath.models as M
from mmpath.errors import ModelError


def test_registry_module_imports_no_torch_and_not_the_factory():
    import mmpath.models.registry as reg

    tree = ast.parse(open(reg.__file__, encoding="utf-8").read())
    top = []
    for node in tree.body:  # module-level imports (TYPE_CHECKING blocks are not run)
        if isinstance(node, ast.Import):
            top += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append(node.module or "")
    assert not [m for m in top if m.split(".")[0] == "torch"], top
    assert not [m for m in top if m.startswith(("mmpath.models.factory", "mmpath.models.enc"))]
    assert not [m for m in top if m.startswith(("mmpath.models.base", "mmpath.models.weights"))]


def test_old_registry_names_are_the_factory_ones():
    from mmpath.models import factory
    from mmpath.models.registry import check_device, create_encoder

    assert create_encoder is factory.create_encoder is M.create_encoder
    assert check_device is factory.check_device
    with pytest.raises(ImportError):
        from mmpath.models.registry import no_such_name  # noqa: F401


def test_one_resolver_for_names_and_instances():
    from mmpath.tl.embed import resolve_encoder

    enc = resolve_encoder("tiny_vit")
    assert enc.info == M.create_encoder("tiny_vit").info
    assert not enc.training
    assert resolve_encoder(enc) is enc
    with pytest.raises(ModelError, match="weights= applies to encoder names"):
        M.create_encoder(enc, weights="/some/folder")
    with pytest.raises(ModelError, match="registry name or an Encoder"):
        resolve_encoder(3)


def test_learned_logit_scale_is_on_the_contract():
    clip = M.create_encoder("tiny_clip")
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(7.0))
    assert clip.learned_logit_scale() == pytest.approx(7.0)
    assert M.create_encoder("tiny_vit").learned_logit_scale() is None

    class Plain(M.Encoder):
        def __init__(self, scale):
            super().__init__()
            self.logit_scale = scale

    assert Plain(20.0).learned_logit_scale() == 20.0
    assert Plain(-1.0).learned_logit_scale() is None


def test_zero_shot_reads_the_scale_through_the_contract():
    from mmpath.tl.zeroshot import DEFAULT_LOGIT_SCALE, MAX_LOGIT_SCALE, _logit_scale

    class Fixed(M.Encoder):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def learned_logit_scale(self):
            return self.value

    assert _logit_scale(Fixed(None)) == (DEFAULT_LOGIT_SCALE, "default")
    assert _logit_scale(Fixed(12.5)) == (12.5, "model")
    assert _logit_scale(Fixed(1e6)) == (MAX_LOGIT_SCALE, "model")


def test_default_num_workers_has_one_home():
    import importlib

    import mmpath._settings as S

    E = importlib.import_module("mmpath.tl.embed")  # mm.tl.embed is the function

    assert E.default_num_workers is S.default_num_workers
    assert 0 <= S.default_num_workers() <= 2
