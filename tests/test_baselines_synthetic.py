"""The baselines detect the synthetic dataset's defects: offline image AUROC >= 0.9 on the default category at
the default size (100 normal training images, 256 px, pretrained EfficientNet-Lite0 features).

CFA trains 1 epoch here instead of its published 30 to keep the suite fast. Measured on the default category
(seed 0): 1 epoch 0.917 image / 0.985 pixel AUROC, 3 epochs 0.918 / 0.989, at a third of the training time."""

from __future__ import annotations

import pytest

from oadbench.runner import run
from tests.conftest import compose


def default_size_run(results_dir, *overrides: str) -> dict:
    return compose(f"results_dir={results_dir}", "progress=false", "wandb.mode=disabled", *overrides)


@pytest.mark.parametrize("method,extra", [("patchcore", []), ("cfa", ["method.epochs=1"])])
def test_offline_baseline_reaches_090_image_auroc_on_synthetic(tmp_path, method, extra):
    record = run(default_size_run(tmp_path, "protocol=offline", f"method={method}", *extra))
    assert record["data"]["stream"] == 100 and record["data"]["image_size"] == 256
    assert record["final"]["image_auroc"] >= 0.9
    assert record["final"]["pixel_auroc"] >= 0.9
