"""``mmpath weights install``: safe names (nothing outside one folder is touched) and checked
contents (expected files, loadable tensors, names and shapes against the architecture)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import mmpath.models as M
from mmpath._names import check_name, is_safe_name, to_component
from mmpath.cli import main
from mmpath.errors import UnsafeNameError, WeightsError
from mmpath.models.weights import weights_dir

BAD_NAMES = ["", ".", "..", "../x", "a/../b", "a/b/c", "/etc", "x\x00y", "x\\y", ".hidden", " uni"]


def _snapshot(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
    )


def test_one_rule_for_names():
    for ok in ("uni", "org--name", "S0", "slide 1 (HE)", "X_toy", "a.b"):
        assert is_safe_name(ok) and check_name(ok) == ok
    for bad in [*BAD_NAMES, "x" * 201, None, 3]:
        assert not is_safe_name(bad)
        with pytest.raises(UnsafeNameError) as err:
            check_name(bad, what="slide id")
        assert "\n" not in str(err.value) and "slide id" in str(err.value)
    assert to_component("HLA-A/B") == "HLA-A_B" and to_component("..") == "_."
    assert is_safe_name(to_component("../../x\x00"))
    for bad in ("", ".", ".."):
        with pytest.raises(UnsafeNameError):
            weights_dir(bad)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_touch_nothing(name, mmpath_home, timm_format, capsys):
    installed = mmpath_home / "weights" / "uni"
    installed.mkdir(parents=True)
    (installed / "model.safetensors").write_bytes(b"keep me")
    before = _snapshot(mmpath_home)
    assert main(["weights", "install", name, str(timm_format), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmpath: error: ") and "Traceback" not in err[0]
    assert _snapshot(mmpath_home) == before


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_weights",))


def test_install_checks_what_it_copies(
    tiny_uni_entry, mmpath_home, timm_format, tmp_path, capsys, monkeypatch
):
    monkey = tmp_path / "cwd"
    monkey.mkdir()
    monkeypatch.chdir(monkey)
    bad = {}
    bad["readme"] = tmp_path / "readme_only"
    bad["readme"].mkdir()
    (bad["readme"] / "readme.txt").write_text("hello")
    bad["random"] = tmp_path / "random_bin"
    bad["random"].mkdir()
    (bad["random"] / "pytorch_model.bin").write_bytes(os.urandom(1 << 20))
    bad["truncated"] = tmp_path / "truncated"
    bad["truncated"].mkdir()
    data = (timm_format / "model.safetensors").read_bytes()
    (bad["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    bad["pickle"] = tmp_path / "pickle"
    bad["pickle"].mkdir()
    (bad["pickle"] / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Boom()}))
    bad["shapes"] = tmp_path / "other_model"
    bad["shapes"].mkdir()
    enc = M.create_encoder("tiny_vit")
    torch.save(enc.state_dict(), bad["shapes"] / "pytorch_model.bin")
    wants = {
        "readme": "no weights file.*readme.txt",
        "random": "corrupt or not a checkpoint",
        "truncated": "corrupt",
        "pickle": "corrupt or not a checkpoint",
        "shapes": f"do not match encoder '{tiny_uni_entry}'",
    }
    for key, folder in bad.items():
        assert main(["weights", "install", tiny_uni_entry, str(folder)]) == 2, key
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (key, err)
        assert __import__("re").search(wants[key], err[0]), (key, err)
        assert not (mmpath_home / "weights" / tiny_uni_entry).exists()
    assert not (monkey / "pwned_by_weights").exists()
    # the reader's message is shown whole (not cut at a fixed width)
    with pytest.raises(WeightsError) as info:
        M.create_encoder(tiny_uni_entry, weights=bad["random"])
    assert info.value.args[0].rstrip().endswith("download it again")
    # the real thing installs, and list says verified until a file changes
    assert M.list_encoders(tiny_uni_entry)["weights"].iloc[0] == "missing"
    assert main(["weights", "install", tiny_uni_entry, str(timm_format)]) == 0
    assert "verified: names and shapes" in capsys.readouterr().out
    assert M.list_encoders(tiny_uni_entry)["weights"].iloc[0] == "verified"
    assert M.create_encoder(tiny_uni_entry).info.weights == str(weights_dir(tiny_uni_entry))
    with open(weights_dir(tiny_uni_entry) / "config.json", "a") as fh:
        fh.write(" ")
    assert M.list_encoders(tiny_uni_entry)["weights"].iloc[0] == "found"
