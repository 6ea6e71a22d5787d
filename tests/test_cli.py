"""The ``oadbench`` command: a run in a real subprocess prints its table and writes its record; listing; clear
errors for unknown names and keys (one of each in a real subprocess, the rest through ``main`` in this process,
which is what ``python -m oadbench`` calls: each subprocess pays the imports again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SMALL


def oadbench(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "oadbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``oadbench ARGS`` run through ``main`` in this process."""
    from oadbench.cli import main

    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as stop:  # Hydra's own errors leave through sys.exit, as in the command
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def test_run_prints_the_table_and_writes_record_and_wandb_run(tmp_path):
    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    out = oadbench("run", "protocol=online_cold_start", "method=padim", "dataset=synthetic", "image_size=64",
                   "results_dir=results", *small, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "img_AUROC" in out.stdout and "AUPRO" in out.stdout and "status: finished" in out.stdout
    assert "observe" in out.stdout and "peak RSS" in out.stdout
    records = [p for p in (tmp_path / "results").rglob("*.json") if "wandb" not in p.parts]
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["status"] == "finished" and record["config"]["method"]["name"] == "padim"
    assert list((tmp_path / "results" / "wandb").glob("offline-run-*/*.wandb"))
    assert not (tmp_path / "outputs").exists()  # Hydra writes no output directories of its own
    again = oadbench("run", "protocol=online_cold_start", "method=padim", "dataset=synthetic", "image_size=64",
                     "results_dir=results", *small, cwd=tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout


def test_list(tmp_path, capsys):
    out = oadbench("list", "methods", cwd=tmp_path)
    assert out.returncode == 0 and "padim" in out.stdout
    for what, expected in (("methods", "padim"), ("protocols", "online_prequential"), ("datasets", "visa")):
        status, stdout, _ = in_process(capsys, "list", what)
        assert status == 0 and expected in stdout


def test_unknown_names_list_the_valid_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arg, valid in (("method=padin", "padim"), ("protocol=online", "online_cold_start"),
                       ("dataset=mvtecad", "mvtec")):
        status, _, err = in_process(capsys, "run", arg)
        assert status == 2
        assert valid in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_bad_values_are_errors_naming_the_key(tmp_path, capsys, monkeypatch):
    out = oadbench("run", "protocol.stream.order=sideways", cwd=tmp_path)
    assert out.returncode == 2 and "stream.order" in out.stderr and "by_defect" in out.stderr
    assert "Traceback" not in out.stderr
    monkeypatch.chdir(tmp_path)
    status, _, err = in_process(capsys, "run", "dataset=mvtec", f"dataset.root={tmp_path / 'none'}",
                                "dataset.category=bottle")
    assert status == 2 and "expected layout" in err and "train/good" in err
    status, _, err = in_process(capsys, "run", "no_such_key=1")
    assert status != 0 and "no_such_key" in err
    assert not (tmp_path / "results").exists()


def test_multirun_with_cfg_is_a_clear_error(capsys):
    from oadbench.cli import main

    assert main(["run", "-m", "seed=0,1", "--cfg", "job"]) == 2
    err = capsys.readouterr().err
    assert "-m: cannot be combined with --cfg" in err and "Traceback" not in err
