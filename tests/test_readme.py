"""The README's instructions work as written: the method example runs, the setup commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from oadbench.method import discover_methods
from oadbench.runner import run
from tests.conftest import small_run

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_method_example_runs_under_every_kind_of_protocol(tmp_path):
    text = README.read_text()
    section = text[text.index("### Adding a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "nearest_mean.py").write_text(code)
    discover_methods([methods])
    for protocol in ("online_cold_start", "online_prequential", "offline"):
        record = run(small_run(tmp_path / protocol, f"protocol={protocol}", "method=nearest_mean"))
        assert record["status"] == "finished"
        assert record["checkpoints"][0]["footprint_bytes"] >= 0
        assert 0.0 <= record["final"]["image_auroc"] <= 1.0


def test_ci_runs_the_readme_setup_commands():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    for marker in ("<!-- ci:install -->", "<!-- ci:test -->"):
        assert marker in text and marker in ci
    install = re.search(r"<!-- ci:install -->\n```bash\n(.*?)\n```", text, re.S).group(1)
    assert "pip install" in install and "oadbench run protocol=online_cold_start" in install
