"""oadbench as a package: the sdist and the wheel built from the checkout carry every built-in method and protocol,
and the wheel, installed into a fresh virtual environment, works from a directory outside the checkout.

The build runs without build isolation (no network): the test environment's setuptools builds, as the ``dev``
extra provides it. The fresh environment gets the wheel without its dependencies and sees the test environment's
packages through a ``.pth`` file, which appends them after its own site-packages, so the oadbench it imports is
the installed wheel, never the checkout.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import oadbench
from tests.conftest import SMALL

REPO = Path(__file__).resolve().parents[1]
METHOD_FILES = sorted(p.name for p in (REPO / "methods").glob("*.py"))
PROTOCOL_FILES = sorted(p.name for p in (REPO / "protocols").glob("*.yaml"))
BUILTIN_METHODS = {name for p in (REPO / "methods").glob("*.py")
                   for name in re.findall(r"@register_method\(\"(\w+)\"\)", p.read_text())}
PACKAGE_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "oadbench").rglob("*.py"))

pytestmark = pytest.mark.slow


def checkout_copy(dest: Path) -> Path:
    """The checkout's files as a clean clone has them (tracked and not ignored), so that the build's own outputs
    (``build/``, ``*.egg-info``) never land in the checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from that sdist (``python -m build``'s default), from a copy of the checkout."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know its files")
    src = checkout_copy(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_wheel_carries_the_package_every_builtin_method_and_protocol_and_the_metadata(dists):
    assert METHOD_FILES and PROTOCOL_FILES
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"oadbench-{oadbench.__version__}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        for name in METHOD_FILES:
            assert f"oadbench/methods/{name}" in names
            assert wheel.read(f"oadbench/methods/{name}") == (REPO / "methods" / name).read_bytes()
        for name in PROTOCOL_FILES:
            assert wheel.read(f"oadbench/protocols/{name}") == (REPO / "protocols" / name).read_bytes()
    assert set(PACKAGE_FILES) <= names, sorted(set(PACKAGE_FILES) - names)
    assert f"{info}/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "methods/", "protocols/")) for n in names)  # no stray top-level packages
    assert "oadbench = oadbench.cli:main" in entry_points

    headers = email.message_from_string(metadata)
    assert headers["Version"] == oadbench.__version__
    assert headers["License-Expression"] == "Apache-2.0" and headers["License-File"] == "LICENSE"
    classifiers = headers.get_all("Classifier")
    assert "Intended Audience :: Science/Research" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert headers["Description-Content-Type"] == "text/markdown"
    assert headers.get_payload().strip().startswith("# oadbench")  # the README is the long description
    assert {"sweep", "dev"} <= set(headers.get_all("Provides-Extra"))
    header_text = metadata.split("\n\n", 1)[0]
    assert "://" not in header_text and "@" not in header_text  # no host names, addresses or URLs


def test_the_sdist_carries_the_single_sources_the_wheel_is_built_from(dists):
    top = f"oadbench-{oadbench.__version__}"
    with tarfile.open(dists["sdist"]) as sdist:
        names = set(sdist.getnames())
        for name in METHOD_FILES:
            assert sdist.extractfile(f"{top}/methods/{name}").read() == (REPO / "methods" / name).read_bytes()
        for name in PROTOCOL_FILES:
            assert f"{top}/protocols/{name}" in names
    assert {f"{top}/{f}" for f in ("pyproject.toml", "README.md", "LICENSE", "PKG-INFO", "MANIFEST.in")} <= names
    assert {f"{top}/{f}" for f in PACKAGE_FILES} <= names
    assert not any(n.startswith(f"{top}/oadbench/methods") for n in names)  # mapped at build time, not copied


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel alone (no dependencies), seeing the test environment's
    packages after its own; returns its ``bin`` (``Scripts``) directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    scripts = Path(sysconfig.get_path("scripts", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    python = scripts / Path(sys.executable).name
    ours = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    (purelib / "test-environment.pth").write_text("".join(f"{p}\n" for p in ours))
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          "--quiet", str(dists["wheel"])], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return scripts


def outside(scripts: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``args`` run in ``cwd`` with the fresh environment activated and nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OADBENCH_METHODS_PATH", "OADBENCH_PROTOCOLS_PATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{scripts}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(scripts.parent),
               WANDB_SILENT="true")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_wheel_lists_and_runs_from_outside_the_checkout(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    python = str(installed / Path(sys.executable).name)
    where = outside(installed, work, python, "-c", "import oadbench; print(oadbench.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent) and REPO not in Path(where.stdout).parents

    version = outside(installed, work, "oadbench", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"oadbench {oadbench.__version__}"
    assert outside(installed, work, python, "-m", "oadbench", "--version").stdout == version.stdout

    methods = outside(installed, work, "oadbench", "list", "methods")
    assert methods.returncode == 0, methods.stderr
    listed = {line.split()[0] for line in methods.stdout.splitlines() if line.strip()}
    assert listed == BUILTIN_METHODS and {"cfa", "lemo", "padim", "patchcore"} <= listed
    protocols = outside(installed, work, "oadbench", "list", "protocols")
    assert protocols.returncode == 0, protocols.stderr
    assert {line.split()[0] for line in protocols.stdout.splitlines() if line.strip()} == {
        Path(n).stem for n in PROTOCOL_FILES}

    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    ran = outside(installed, work, "oadbench", "run", "protocol=online_cold_start", "method=padim", "image_size=64",
                  "wandb.mode=disabled", "progress=false", "protocol.evaluation.checkpoints=[0,4]", *small)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "status: finished" in ran.stdout
    (record_path,) = (work / "results").rglob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "finished" and record["env"]["oadbench"] == oadbench.__version__
    assert [c["observed"] for c in record["checkpoints"]][:2] == [0, 4]


def test_a_researchers_own_method_and_protocol_work_with_the_installed_wheel(installed, tmp_path):
    """``./methods/*.py`` and ``./protocols/*.yaml`` of the working directory join the built-in ones."""
    (tmp_path / "methods").mkdir()
    readme = (REPO / "README.md").read_text()
    example = readme[readme.index("### Adding a method"):].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "methods" / "nearest_mean.py").write_text(example)
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "my_stream.yaml").write_text(
        "description: my line's stream\ntraining: online\n"
        "stream: {pool: train, order: shuffled, batch_size: 2}\nevaluation: {mode: holdout, checkpoints: [0, 4]}\n")
    methods = outside(installed, tmp_path, "oadbench", "list", "methods")
    assert methods.returncode == 0, methods.stderr
    assert {"nearest_mean", "padim", "lemo"} <= {line.split()[0] for line in methods.stdout.splitlines() if line}
    protocols = outside(installed, tmp_path, "oadbench", "list", "protocols")
    assert {"my_stream", "online_cold_start"} <= {line.split()[0] for line in protocols.stdout.splitlines() if line}
    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    ran = outside(installed, tmp_path, "oadbench", "run", "protocol=my_stream", "method=nearest_mean",
                  "image_size=64", "wandb.mode=disabled", "progress=false", *small)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    (record_path,) = (tmp_path / "results").rglob("*.json")
    record = json.loads(record_path.read_text())
    assert record["config"]["method"]["name"] == "nearest_mean" and record["config"]["protocol"]["name"] == "my_stream"
    assert [c["observed"] for c in record["checkpoints"]][:2] == [0, 4]
