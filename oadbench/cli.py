"""The ``oadbench`` command: ``run`` (Hydra), ``list``, ``data``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oadbench.errors import ConfigError, OadbenchError

log = logging.getLogger("oadbench")

USAGE = """\
usage: oadbench <command> [...]

commands:
  run  [KEY=VALUE ...]          one run (or a sweep with -m), configured with Hydra overrides, e.g.
                                oadbench run protocol=online_cold_start method=padim dataset=synthetic seed=0
  list methods|protocols|datasets
  leaderboard [RECORDS_DIR ...] [--out DIR] [--headline DIR ...] [--skip-unreadable]
                                compile run records into leaderboards/<protocol>/<dataset>.csv and README.md
                                (default: the committed leaderboards/records into leaderboards/, and
                                leaderboards/headline/records as the README's first tables); several folders
                                (yours and the published ones) compile into one set of tables
  figs [RECORDS_DIR ...] [--out DIR] [--headline DIR ...] [--skip-unreadable]
                                paper figures (PDF and PNG) from run records (default: into paper_figs/)
  compare A B [--records DIR ...] [--metric M] [--protocol P] [--out CSV]
                                A against B (record folders, METHOD@FOLDER, or method names in the published
                                headline records): paired differences, intervals and p-values per data set
  decisions RECORDS_DIR ... [--policy NAME[:KEY=VALUE,...] ...] [--out CSV]
                                label-free threshold policies replayed on prequential records' per-image
                                results: false alarms, misses, F1 of the rejections, hindsight references
  ablation [RECORDS_DIR] [--spec FILE] [--baselines DIR] [--out DIR]
                                an ablation's tables and figures from its records and spec (default: the
                                committed leaderboards/lemo_ablation)
  data synthetic [--root DIR]   write the embedded synthetic dataset (MVTec layout)
  data export --out DIR dataset=NAME [dataset.KEY=VALUE ...]
                                write one category of a dataset as Hub-layout Parquet (read it with dataset=hf)
  --version                     print the version

`python -m oadbench ...` is the same command.

`oadbench run --help` shows the full configuration; `oadbench run --cfg job` prints the resolved one.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V"):
        from oadbench import __version__

        print(f"oadbench {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            return _run(rest)
        if command == "list":
            return _list(rest)
        if command == "data":
            return _data(rest)
        if command == "leaderboard":
            return _leaderboard(rest)
        if command == "figs":
            return _figs(rest)
        if command == "ablation":
            return _ablation(rest)
        if command == "compare":
            return _compare(rest)
        if command == "decisions":
            return _decisions(rest)
    except OadbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"error: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------------------------------
# run


def _group_choices(overrides: Sequence[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Check ``protocol=``, ``method=`` and ``dataset=`` choices before Hydra sees them, so an unknown name is
    one clear error listing the valid ones. Protocol YAML paths are registered under their file stem."""
    from oadbench.data import dataset_names
    from oadbench.method import method_names
    from oadbench.protocol import protocol_names, read_protocol_file

    valid = {"protocol": protocol_names(), "method": method_names(), "dataset": dataset_names()}
    extra: dict[str, dict[str, Any]] = {}
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key in valid and value and not any(c in value for c in "()[]{}$"):  # plain name(s) only
            names = []
            for choice in value.split(","):
                choice = choice.strip()
                if key == "protocol" and choice.endswith((".yaml", ".yml")) and Path(choice).is_file():
                    node = read_protocol_file(Path(choice))
                    extra[Path(choice).stem] = node
                    names.append(Path(choice).stem)
                    continue
                if choice not in valid[key]:
                    raise ConfigError(key, f"unknown {key} '{choice}'", allowed=valid[key])
                names.append(choice)
            arg = f"{key}={','.join(names)}"
        out.append(arg)
    return out, extra


MULTIRUN_FLAGS = ("-m", "--multirun")


def _expand_all_categories(overrides: list[str]) -> list[str]:
    """``dataset.category=all`` -> the dataset's categories as a sweep (adds ``-m`` when missing)."""
    if "dataset.category=all" not in overrides:
        return overrides
    from oadbench.config import DEFAULT_DATASET
    from oadbench.data import get_dataset

    values = dict(arg.partition("=")[::2] for arg in overrides if "=" in arg)
    name = values.get("dataset", DEFAULT_DATASET)
    if "," in name:
        raise ConfigError("dataset.category", "'all' needs a single dataset, got dataset=" + name)
    loader = get_dataset(name)
    if loader.root_option is not None:  # e.g. hf: dataset.path, and the options that say how to read it
        key = f"dataset.{loader.root_option}"
        if values.get(key) is None:
            raise ConfigError(key, f"is required to list the categories of dataset '{name}'")
        options: dict = {k: v for k, v in loader.options.items() if k != loader.root_option}
        for arg, value in values.items():
            parts = arg.split(".")
            if parts[0] == "dataset" and len(parts) == 3 and isinstance(options.get(parts[1]), dict):
                options[parts[1]] = {**options[parts[1]], parts[2]: value or None}
            elif parts[0] == "dataset" and len(parts) == 2 and parts[1] in options:
                options[parts[1]] = value
        categories = loader.categories(values[key], **options)
    else:
        root = values.get("dataset.root") or loader.default_root()
        if root is None:
            raise ConfigError("dataset.root", f"is required to list the categories of dataset '{name}'")
        categories = loader.categories(Path(root).expanduser())
    if not categories:
        raise ConfigError("dataset.category", f"'all': no category found for dataset '{name}'")
    out = [f"dataset.category={','.join(categories)}" if arg == "dataset.category=all" else arg for arg in overrides]
    if not any(arg in MULTIRUN_FLAGS for arg in out):
        out.insert(0, "--multirun")
    log.info("dataset.category=all: %d categories of %s (%s)", len(categories), name, ", ".join(categories))
    return out


def _run(overrides: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from oadbench.config import PRIMARY, register_configs

    expanded = _expand_all_categories(overrides)  # dataset.category=all turns on -m
    modes = [a for a in expanded if a in (*MULTIRUN_FLAGS, "--cfg", "-c", "--info", "-i", "--shell-completion")]
    if any(a in MULTIRUN_FLAGS for a in modes) and len(modes) > 1:
        raise ConfigError("-m" if expanded == overrides else "-m (dataset.category=all sweeps)",
                          f"cannot be combined with {', '.join(a for a in modes if a not in MULTIRUN_FLAGS)}"
                          "; print a configuration without -m (e.g. `oadbench run hydra/launcher=joblib --cfg "
                          "hydra`)")
    overrides, extra = _group_choices(expanded)
    register_configs(extra)
    sweeping = any(arg in MULTIRUN_FLAGS for arg in overrides)
    os.environ["OADBENCH_SWEEP_ID"] = str(os.getpid())  # names the sweep directory; launcher workers inherit it

    def task(cfg: DictConfig) -> None:
        from oadbench.report import format_record
        from oadbench.runner import run

        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            record = run(config)
        except OadbenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if not sweeping:
                sys.exit(2)
            return  # a sweep goes on; rerunning it completes the missing runs
        except Exception:
            if not sweeping:
                raise
            log.exception("run failed (its record says so); the sweep goes on")
            return
        print(format_record(record))

    saved = sys.argv
    sys.argv = ["oadbench run", *overrides]
    try:
        hydra.main(config_path=None, config_name=PRIMARY, version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return 0


# --------------------------------------------------------------------------------------------------------------
# list, data


def _list(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oadbench list")
    parser.add_argument("what", choices=["methods", "protocols", "datasets"])
    what = parser.parse_args(args).what
    rows: list[tuple[str, str]] = []
    if what == "methods":
        from oadbench.method import get_method, method_names

        rows = [(n, get_method(n).description) for n in method_names()]
    elif what == "protocols":
        from oadbench.protocol import load_protocol, protocol_names

        for n in protocol_names():
            spec = load_protocol(n)
            rows.append((n, f"[{spec.training}, {spec.evaluation.mode}, pool={spec.stream.pool}] {spec.description}"))
    else:
        from oadbench.data import dataset_names, get_dataset

        rows = [(n, get_dataset(n).description) for n in dataset_names()]
    width = max((len(n) for n, _ in rows), default=0)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def _repo_or_cwd(name: str) -> Path:
    """The source checkout's ``<name>/`` folder, else ``./<name>``."""
    from oadbench.paths import repo_dir

    return repo_dir(name) or Path(name)


def _leaderboard(args: list[str]) -> int:
    from oadbench.leaderboard import compile_leaderboards, default_headline

    folder = _repo_or_cwd("leaderboards")
    parser = argparse.ArgumentParser(prog="oadbench leaderboard")
    parser.add_argument("records", nargs="*", type=Path,
                        help="folders of run records (searched recursively; several compile into one set of tables; "
                             "default: the committed leaderboards/records, with leaderboards/headline/records as "
                             "the headline tables)")
    parser.add_argument("--out", type=Path, default=folder, help="where the CSVs and README.md go")
    parser.add_argument("--headline", type=Path, action="append", default=None,
                        help="records of the headline tables (one per protocol; synthetic data sets apart), the "
                             "README's first; repeat to add folders")
    _skip_option(parser)
    ns = parser.parse_args(args)
    headline = ns.headline
    if not ns.records:
        ns.records = [folder / "records"]
        if headline is None:
            headline = default_headline(folder)
    for path in compile_leaderboards(ns.records, ns.out, headline, skip_unreadable=ns.skip_unreadable):
        print(path)
    return 0


def _skip_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="compile without record files that cannot be read (bad JSON, missing keys, a per-image "
                             "file whose digest does not match), listing them; default: stop with an error naming "
                             "each")


def _figs(args: list[str]) -> int:
    from oadbench.figures import draw_figures
    from oadbench.leaderboard import default_headline

    folder = _repo_or_cwd("leaderboards")
    parser = argparse.ArgumentParser(prog="oadbench figs")
    parser.add_argument("records", nargs="*", type=Path,
                        help="folders of run records (default: the committed leaderboards/records, with "
                             "leaderboards/headline/records for the headline's critical-difference diagram)")
    parser.add_argument("--out", type=Path, default=_repo_or_cwd("paper_figs"), help="where the PDF and PNG go")
    parser.add_argument("--headline", type=Path, action="append", default=None,
                        help="records of the headline table, for its critical-difference diagram; repeatable")
    _skip_option(parser)
    ns = parser.parse_args(args)
    headline = ns.headline or []
    if not ns.records:
        ns.records = [folder / "records"]
        if ns.headline is None:
            headline = [h for h in [default_headline(folder)] if h is not None]
    for path in draw_figures(ns.records, ns.out, headline, skip_unreadable=ns.skip_unreadable):
        print(path)
    return 0


def _compare(args: list[str]) -> int:
    from oadbench.compare import COMPARE_METRICS, compare, load_side, to_csv, to_text
    from oadbench.leaderboard import HEADLINE_RECORDS

    parser = argparse.ArgumentParser(
        prog="oadbench compare",
        description="A against B on the data sets both cover: per data set the paired difference with its 95 %% "
                    "interval and p-value, across data sets the Wilcoxon signed-rank test.")
    parser.add_argument("a", help="a folder of records, METHOD@FOLDER, or a method name (looked up in --records)")
    parser.add_argument("b", help="the same, for the other side")
    parser.add_argument("--records", type=Path, action="append", default=None,
                        help="where method names are looked up (default: the published leaderboards/headline/"
                             "records); repeatable")
    parser.add_argument("--protocol", default=None, help="only records of this protocol table label")
    parser.add_argument("--metric", default="image_auroc", choices=COMPARE_METRICS)
    parser.add_argument("--out", type=Path, default=Path("compare.csv"), help="the CSV written (default: compare.csv)")
    _skip_option(parser)
    ns = parser.parse_args(args)
    lookup = ns.records or [_repo_or_cwd("leaderboards") / HEADLINE_RECORDS]
    a = load_side(ns.a, lookup, ns.protocol, ns.skip_unreadable)
    b = load_side(ns.b, lookup, ns.protocol, ns.skip_unreadable)
    rows, summary = compare(a, b, ns.metric)
    print(to_text(a, b, ns.metric, rows, summary))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(to_csv(rows))
    print(f"\nwritten: {ns.out}")
    return 0


def _decisions(args: list[str]) -> int:
    from oadbench.decision_report import command

    return command(args)


def _ablation(args: list[str]) -> int:
    from oadbench.ablation import compile_ablation

    folder = _repo_or_cwd("leaderboards") / "lemo_ablation"
    parser = argparse.ArgumentParser(prog="oadbench ablation")
    parser.add_argument("records", nargs="?", type=Path, default=folder / "records",
                        help="directory of the ablation's run records (searched recursively)")
    parser.add_argument("--spec", type=Path, default=folder / "variants.yaml", help="the ablation spec (YAML)")
    parser.add_argument("--baselines", type=Path, default=folder / "baselines",
                        help="records of the other methods, for the baselines table")
    parser.add_argument("--out", type=Path, default=folder, help="where the CSVs, README.md and figures go")
    ns = parser.parse_args(args)
    for path in compile_ablation(ns.records, ns.spec, ns.out, ns.baselines):
        print(path)
    return 0


def _data(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oadbench data")
    sub = parser.add_subparsers(dest="action", required=True)
    syn = sub.add_parser("synthetic", help="write the embedded synthetic dataset in MVTec AD layout")
    syn.add_argument("--root", type=Path, default=None, help="target directory (default: the cache)")
    exp = sub.add_parser("export", help="write one category of a dataset as Hub-layout Parquet (TheoM55/"
                         "mvtec_all_objects_split schema): DIR/data/<category>.<train|test>-00000-of-00001.parquet")
    exp.add_argument("--out", type=Path, required=True, help="target directory (categories accumulate in it)")
    exp.add_argument("overrides", nargs="*", metavar="dataset.KEY=VALUE",
                     help="dataset=NAME and its dataset.* settings, as for `oadbench run`")
    ns = parser.parse_args(args)
    if ns.action == "synthetic":
        from oadbench.data.synthetic import write_synthetic

        path = write_synthetic(ns.root) if ns.root is not None else write_synthetic()
        print(path)
    elif ns.action == "export":
        from hydra import compose, initialize
        from hydra.errors import HydraException
        from omegaconf import OmegaConf

        from oadbench.config import DEFAULT_DATASET, PRIMARY, register_configs
        from oadbench.data import get_dataset
        from oadbench.data.hf import export_dataset

        overrides, _ = _group_choices(ns.overrides)
        values = dict(arg.partition("=")[::2] for arg in overrides)
        known = get_dataset(values.get("dataset", DEFAULT_DATASET)).config_defaults()
        for arg in overrides:
            key = arg.partition("=")[0].lstrip("+~")
            if key != "dataset" and not key.startswith("dataset."):
                raise ConfigError(key, "export takes only dataset=NAME and dataset.KEY=VALUE settings")
            if key.startswith("dataset.") and key.split(".")[1] not in known:
                raise ConfigError(key, f"unknown option of dataset '{known['name']}'",
                                  allowed=[f"dataset.{k}" for k in known if k != "name"])
        register_configs()
        try:
            with initialize(version_base="1.3", config_path=None):
                cfg = compose(config_name=PRIMARY, overrides=overrides)
        except HydraException as exc:
            raise ConfigError("dataset", str(exc).splitlines()[0]) from None
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        for path in export_dataset(dataset, ns.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
