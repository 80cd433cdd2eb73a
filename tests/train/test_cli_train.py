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
    tasks["mil"] = "mil"
    # configs/archive.yaml is an archive run config, not a training one (tests/archive)
    shipped = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "archive")
    assert len(shipped) >= 6
    for path in shipped:  # every shipped config parses against its task's dataclasses
        cfg = load_config(get_task(tasks[path.stem.split("-")[0]]).config, path)
        assert cfg.train.epochs >= 1
    from mmpath.archive import load_archive_config

    assert load_archive_config(CONFIGS / "archive.yaml").tiling.size > 0
    lit = load_config(get_task("clip").config, CONFIGS / "clip-lit-minilm.yaml")
    assert lit.model.mode == "lit" and lit.model.text == "minilm"


def test_ssl_tiny_config_runs_on_the_tiles_its_header_makes(tmp_path, monkeypatch, capsys):
    """configs/ssl-tiny.yaml names the table its own `mmpath tile` line writes, and that
    table holds at least one global batch (the README runs this recipe as written)."""
    import mmpath as mm

    monkeypatch.chdir(tmp_path)
    lines = (CONFIGS / "ssl-tiny.yaml").read_text().splitlines()
    header = next(line for line in lines if "mmpath tile" in line)
    tile_args = header.split("mmpath tile", 1)[1].split("#", 1)[0].split()
    tile_args[0] = str(mm.datasets.sample_slide().path)  # the header's repo-relative path
    assert main(["-q", "tile", *tile_args]) == 0
    argv = ["-q", "train", "ssl", "--config", str(CONFIGS / "ssl-tiny.yaml")]
    argv += ["--out", str(tmp_path / "run"), "--set", "train.max_steps=1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "trained ssl: 1 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


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


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("out: x\n- a\n", [], "not valid YAML: expected <block end>.*line 2"),
        ("train: {epochs: 1}\n", ["train.lr=[1"], "train.lr=\\[1'.*not valid YAML"),
        ("train: {epochs: 1}\n", ["train..lr=1"], "empty key part"),
        ("train: {epochs: 1}\n", ["=1"], "empty key part"),
    ],
)
def test_broken_yaml_and_overrides_are_one_line_errors(tmp_path, capsys, text, overrides, match):
    import re

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    argv = ["train", "seg", "--config", str(cfg), "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmpath: error:") and "\n" not in err and re.search(match, err)
    assert not (tmp_path / "run").exists()


def test_refused_resume_leaves_the_run_untouched(tmp_path, capsys):
    run = tmp_path / "seg"
    small = ["data.synthetic_n=24", "train.epochs=1", "train.batch_size=8", "train.quiet=true"]
    argv = ["train", "seg", "--config", str(CONFIGS / "seg-tiny.yaml"), "--out", str(run)]
    for item in small:
        argv += ["--set", item]
    assert main(argv) == 0
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    # Another shape: one line naming the mismatch, not a torch traceback.
    assert main([*argv, "--resume", "--set", "model.decoder_channels=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "size mismatch" in err and "\n" not in err
    # Another task in the same folder.
    vae = ["train", "anomaly", "--config", str(CONFIGS / "vae-tiny.yaml"), "--out", str(run)]
    assert main([*vae, "--resume", "--set", "train.quiet=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another task" in err and "\n" not in err
    assert (run / "config.yaml").read_text() == before
    assert main([*argv, "--resume"]) == 0  # the run itself still resumes
