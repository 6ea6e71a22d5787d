"""Sweeps with real processes: Hydra multirun through submitit_local and joblib, a sweep killed with SIGKILL and
rerun, two concurrent sweeps over one records directory, and the run claims that keep them apart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oadbench.claims import RunClaim, claim_path
from tests.conftest import SMALL

pytestmark = pytest.mark.slow

BASE = ["image_size=64", "progress=false", "wandb.mode=disabled", "method=padim", "threads=1",
        *(f"dataset.{k}={v}" for k, v in SMALL.items())]


def command(results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "oadbench", "run", "-m", *BASE, f"results_dir={results}", *args]


def sweep(results: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(command(results, *args), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def records(results: Path) -> dict[Path, dict]:
    """Every ``*.json`` under the records tree (not Hydra's multirun logs), parsed: a corrupt one fails here."""
    found = {}
    for path in sorted(results.rglob("*.json")):
        if "multirun" in path.parts:
            continue
        found[path] = json.loads(path.read_text())
    return found


def keys(found: dict[Path, dict]) -> list[tuple[str, int]]:
    return sorted((r["config"]["dataset"]["category"], r["config"]["seed"]) for r in found.values())


def test_submitit_local_multirun_writes_every_record(tmp_path):
    sweep(tmp_path, "hydra/launcher=submitit_local", "dataset.category=capsule,fabric", "seed=0,1")
    found = records(tmp_path)
    assert keys(found) == [("capsule", 0), ("capsule", 1), ("fabric", 0), ("fabric", 1)]
    assert all(r["status"] == "finished" for r in found.values())


def test_joblib_multirun_over_every_category(tmp_path):
    out = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset.category=all", "seed=0")
    found = records(tmp_path)
    assert keys(found) == [("capsule", 0), ("fabric", 0), ("marble", 0), ("washer", 0)]
    assert all(r["status"] == "finished" for r in found.values())
    assert "4 categories" in out.stderr


def test_killed_sweep_resumes_exactly_the_missing_runs(tmp_path):
    args = ("dataset.category=capsule,fabric", "seed=0,1,2")
    proc = subprocess.Popen(command(tmp_path, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while len([p for p in tmp_path.rglob("*.json") if "multirun" not in p.parts]) < 2:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(tmp_path)  # every file that exists parses, and is a finished run
    assert 2 <= len(before) < 6
    assert all(r["status"] == "finished" for r in before.values())
    snapshot = {p: p.read_bytes() for p in before}

    out = sweep(tmp_path, *args)
    after = records(tmp_path)
    assert keys(after) == [(c, s) for c in ("capsule", "fabric") for s in (0, 1, 2)]  # each run exactly once
    assert all(r["status"] == "finished" for r in after.values())
    assert all(p.read_bytes() == data for p, data in snapshot.items())  # finished runs were not redone
    assert out.stdout.count("[skipped: finished record exists") == len(before)
    assert not list(tmp_path.rglob("*.claim"))  # the killed run's claim was taken over and released
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_concurrent_sweeps_share_one_records_directory(tmp_path):
    procs = [subprocess.Popen(command(tmp_path, "dataset.category=capsule", f"seed={seeds}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seeds in ("0,1,2,3", "3,2,1,0")]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outputs]
    found = records(tmp_path)
    assert keys(found) == [("capsule", s) for s in range(4)]
    assert all(r["status"] == "finished" for r in found.values())
    executed = [line for out, _ in outputs for line in out.splitlines()
                if line.startswith("online_cold_start | padim") and "[skipped" not in line]
    for seed in range(4):  # every run was executed by exactly one of the two sweeps
        assert sum(f"| seed {seed} |" in line for line in executed) == 1, executed
    assert len(list((tmp_path / "multirun").iterdir())) == 2  # Hydra's sweep logs do not collide either


# ---- claims, in one process --------------------------------------------------------------------------------


def test_a_live_claim_excludes_others_and_is_released(tmp_path):
    record = tmp_path / "r.json"
    first, second = RunClaim(record), RunClaim(record)
    assert first.acquire()
    assert not second.acquire()
    assert second.owner["pid"] == os.getpid() and second.owner["host"] == socket.gethostname()
    second.release()  # not its claim: nothing happens
    assert claim_path(record).exists()
    first.release()
    assert not claim_path(record).exists()
    assert second.acquire()
    second.release()


def dead_owners_claim(record: Path) -> Path:
    """Leave a claim on ``record`` whose owner, a process on this host, has exited; returns ``record``."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_path(record).write_text(json.dumps({"token": "x", "host": socket.gethostname(), "pid": dead.pid,
                                              "started": time.time()}))
    return record


def test_a_dead_owners_claim_is_taken_over(tmp_path):
    record = dead_owners_claim(tmp_path / "r.json")
    claim = RunClaim(record)
    assert claim.acquire()
    assert json.loads(claim_path(record).read_text())["pid"] == os.getpid()
    claim.release()


def test_clear_stale_removes_a_dead_owners_claim_and_keeps_a_live_one(tmp_path):
    record = dead_owners_claim(tmp_path / "r.json")
    assert RunClaim(record).clear_stale()
    assert not claim_path(record).exists()
    live = RunClaim(record)
    assert live.acquire()
    assert not RunClaim(record).clear_stale()
    assert json.loads(claim_path(record).read_text())["token"] == live.token
    live.release()


def test_a_claim_without_heartbeat_is_stale_on_any_host(tmp_path):
    record = tmp_path / "r.json"
    claim_path(record).write_text(json.dumps({"token": "y", "host": "another-node", "pid": 1, "started": 0}))
    assert not RunClaim(record, stale_after_s=60).acquire()  # another host, fresh: assumed alive
    old = time.time() - 120
    os.utime(claim_path(record), (old, old))
    claim = RunClaim(record, stale_after_s=60)
    assert claim.acquire()
    claim.release()


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    record = tmp_path / "r.json"
    claim = RunClaim(record, heartbeat_s=0.05)
    assert claim.acquire()
    old = time.time() - 1000
    os.utime(claim_path(record), (old, old))
    time.sleep(0.3)
    assert time.time() - claim_path(record).stat().st_mtime < 5
    claim.release()


def test_the_readme_slurm_settings_are_valid_launcher_keys(tmp_path):
    """Up to the cluster boundary: the README's SLURM sweep composes with the submitit_slurm launcher."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("hydra/launcher=submitit_slurm", 1)[1].split("```", 1)[0]
    settings = [tok for tok in block.split() if tok.startswith("hydra.launcher.")]
    assert len(settings) >= 5
    out = subprocess.run([sys.executable, "-m", "oadbench", "run", "hydra/launcher=submitit_slurm", *settings,
                          "--cfg", "hydra"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SlurmLauncher" in out.stdout
    for setting in settings:
        key, value = setting.removeprefix("hydra.launcher.").split("=")
        assert f"\n    {key}: {value}\n" in out.stdout, setting
