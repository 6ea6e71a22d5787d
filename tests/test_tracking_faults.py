"""An unusable W&B never costs a run: online mode without credentials or without network, or a broken W&B
directory, is a warning and an offline or disabled logger; the local record is always written. Real
subprocesses with a private HOME, so no credentials of the machine are seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL

pytestmark = pytest.mark.slow


def run(tmp_path: Path, mode: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") or k == "WANDB_DIR"}
    clean.update({"HOME": str(home), "WANDB_SILENT": "true", **env})
    args = [sys.executable, "-m", "oadbench", "run", "method=padim", "image_size=64", "progress=false",
            f"wandb.mode={mode}", f"results_dir={tmp_path / 'results'}",
            *(f"dataset.{k}={v}" for k, v in SMALL.items())]
    out = subprocess.run(args, capture_output=True, text=True, env=clean, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = [p for p in (tmp_path / "results").rglob("*.json") if "wandb" not in p.parts]
    record = json.loads(path.read_text())
    assert record["status"] == "finished" and record["final"]["image_auroc"] is not None
    return out, record


def test_online_without_credentials_falls_back_to_offline(tmp_path):
    out, record = run(tmp_path, "online")
    assert record["tracking"]["wandb_mode"] == "offline"
    assert "W&B could not start in online mode" in out.stderr
    assert Path(record["tracking"]["wandb_dir"]).is_dir()


def test_online_without_network_falls_back_to_offline(tmp_path):
    out, record = run(tmp_path, "online", WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9",
                      WANDB_INIT_TIMEOUT="5")
    assert record["tracking"]["wandb_mode"] == "offline"
    assert "W&B could not start in online mode" in out.stderr


def test_a_broken_wandb_directory_disables_logging_only(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "wandb").write_text("not a directory")
    out, record = run(tmp_path, "offline")
    assert record["tracking"]["wandb_mode"] == "disabled"
    assert "W&B could not start in offline mode" in out.stderr


def test_a_relative_wandb_directory_is_the_runs_own_under_a_shared_wandb_service(tmp_path, monkeypatch):
    """W&B runs of one process (and of its child processes, through ``WANDB_SERVICE``) share one service, started
    in the working directory of the first run; a run's relative results folder must still be its own working
    directory's, or the run's ``.wandb`` file goes missing (seen when a ``oadbench run`` subprocess followed an
    in-process run)."""
    from oadbench.tracking import Tracker

    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        tracker = Tracker("offline", "oadbench", None, Path("results"), name=name, group="g", tags=[], config={})
        tracker.log({"x": 1.0})
        assert tracker.mode == "offline" and Path(tracker.run_dir).is_absolute()
        tracker.finish({})
        assert list((tmp_path / name / "results" / "wandb").glob("offline-run-*/*.wandb")), name
