"""``mmpath train``: config file + overrides, resume, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmpath.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() reconfigures the root logger onto the captured stderr; undo it afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_shipped_configs_load():
    from mmpath.config import load_config
    from mmpath.train import get_task

    tasks = {"clip": "clip", "ssl": "ssl", "seg": "seg", "vae": "anomaly", "expr": "expr"}
    shipped = sorted(CONFIGS.glob("*.yaml"))
    assert len(shipped) >= 6
    for path in shipped:  # every shipped config parses against its task's dataclasses
        cfg = load_config(get_task(tasks[path.stem.split("-")[0]]).config, path)
        assert cfg.train.epochs >= 1
    lit = load_config(get_task("clip").config, CONFIGS / "clip-lit-minilm.yaml")
    assert lit.model.mode == "lit" and lit.model.text == "minilm"


def test_train_clip_from_the_cli(caption_sets, tmp_path, capsys):
    train, val = caption_sets
    args = [
        "-q",
        "train",
        "clip",
        "--config",
        str(CONFIGS / "clip-tiny.yaml"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.train=[{train}]",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=10",
        "--set",
        "data.augment.hed_scale=0",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained clip: 2 steps" in out and "i2t_r@1=" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["data"]["augment"]["hed_scale"] == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # a second start refuses to overwrite; --resume of a finished run just re-exports
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 1, learning_rate: 0.1}\n")
    assert main(["train", "ssl", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmpath: error:") and "learning_rate" in err and "\n" not in err
    assert main(["train", "clip", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
