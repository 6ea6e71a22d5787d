"""Building blocks shared by several methods; each exists once, here."""

from oadbench.components.aggregate import concat_levels, local_aggregate
from oadbench.components.blur import gaussian_blur, upsample_maps
from oadbench.components.coordconv import CoordConv2d, coordinate_channels
from oadbench.components.coreset import greedy_kcenter, project, sparse_random_projection
from oadbench.components.kmeans import kmeans
from oadbench.components.knn import nearest_neighbours

__all__ = [
    "CoordConv2d", "concat_levels", "coordinate_channels", "gaussian_blur", "greedy_kcenter", "kmeans",
    "local_aggregate", "nearest_neighbours", "project", "sparse_random_projection", "upsample_maps",
]
