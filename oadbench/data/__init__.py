"""Datasets: the Sample record, the loader registry and one loader per supported layout."""

from oadbench.data import btad, folder, hf, mtd, mvtec, synthetic, visa  # noqa: F401  (importing registers the loaders)
from oadbench.data.base import DatasetLoader, dataset_names, get_dataset, register_dataset
from oadbench.data.io import ImageTransform, read_image, read_mask
from oadbench.data.sample import ANOMALOUS, GOOD, NORMAL, CategoryData, Sample

__all__ = [
    "ANOMALOUS", "GOOD", "NORMAL", "CategoryData", "DatasetLoader", "ImageTransform", "Sample",
    "dataset_names", "get_dataset", "read_image", "read_mask", "register_dataset",
]
