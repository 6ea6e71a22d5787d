"""Method registry, discovery (methods/ directories and entry points) and hyperparameter validation."""

from __future__ import annotations

import sys
import textwrap

import pytest

from oadbench import method as method_mod
from oadbench.errors import ConfigError
from oadbench.method import build_config, config_defaults, discover_methods, get_method, method_names


def test_repository_methods_are_discovered():
    assert "padim" in method_names()
    cls = get_method("padim")
    assert cls.name == "padim" and cls.description


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_method("nope")
    assert "padim" in str(err.value) and "nope" in str(err.value)


def test_a_file_dropped_into_a_methods_dir_is_registered(tmp_path):
    (tmp_path / "my_method.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        import torch
        from oadbench.method import Method, Scores, register_method

        @register_method("dropped_in_test")
        class Dropped(Method):
            @dataclass(frozen=True)
            class Config:
                layers: tuple = (2,)
                scale: float = 1.0

            def observe(self, batch):
                pass

            def score(self, batch):
                b, _, h, w = batch.images.shape
                return Scores(torch.zeros(b), torch.zeros(b, h, w))

            def footprint(self):
                return 0
    """))
    (tmp_path / "_private.py").write_text("raise RuntimeError('must not be imported')\n")
    discover_methods([tmp_path])
    cls = get_method("dropped_in_test")
    assert config_defaults(cls) == {"layers": [2], "scale": 1.0}
    assert cls.feature_levels(build_config(cls, {"layers": [1, 3]})) == (1, 3)


def test_entry_point_group_is_discovered(tmp_path, monkeypatch):
    pkg = tmp_path / "ep_method_pkg.py"
    pkg.write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from oadbench.method import Method, register_method

        @register_method("from_entry_point")
        class FromEntryPoint(Method):
            @dataclass(frozen=True)
            class Config:
                layers: tuple = (1,)
            def observe(self, batch): pass
            def score(self, batch): raise NotImplementedError
            def footprint(self): return 0
    """))
    dist = tmp_path / "ep_method_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-method-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[oadbench.methods]\nmine = ep_method_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(method_mod, "_ENTRY_POINTS_LOADED", False)
    discover_methods([])
    assert "from_entry_point" in method_names()
    assert "ep_method_pkg" in sys.modules


@pytest.mark.parametrize(
    "values,key",
    [({"n_feature": 3}, "method.n_feature"), ({"epsilon": "small"}, "method.epsilon"),
     ({"n_features": 2.5}, "method.n_features"), ({"layers": "1,2"}, "method.layers"),
     ({"epsilon": -1.0}, "method.epsilon")],
)
def test_bad_hyperparameters_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        build_config(get_method("padim"), values)
    assert key in str(err.value)


def test_ints_are_accepted_for_floats_and_lists_become_tuples():
    cfg = build_config(get_method("padim"), {"name": "padim", "epsilon": 1, "layers": [1, 2]})
    assert cfg.epsilon == 1.0 and isinstance(cfg.epsilon, float) and cfg.layers == (1, 2)
