"""Building blocks shared by several methods; each exists once, here."""

from oadbench.components.aggregate import (
    FEATURE_SCALES,
    POOL_PADDINGS,
    concat_levels,
    divides_by_channels,
    local_aggregate,
    scale_levels,
)
from oadbench.components.blur import gaussian_blur, upsample_maps
from oadbench.components.coordconv import CoordConv2d, coordinate_channels
from oadbench.components.coreset import greedy_kcenter, project, sparse_random_projection
from oadbench.components.kmeans import kmeans
from oadbench.components.knn import mutual_nearest_neighbours, nearest_neighbours, smallest_k, smallest_sq_distances

__all__ = [
    "FEATURE_SCALES", "POOL_PADDINGS", "CoordConv2d", "concat_levels", "coordinate_channels", "divides_by_channels",
    "gaussian_blur", "greedy_kcenter", "kmeans", "local_aggregate", "mutual_nearest_neighbours",
    "nearest_neighbours", "project", "scale_levels",
    "smallest_k", "smallest_sq_distances", "sparse_random_projection", "upsample_maps",
]
