"""Building blocks shared by several methods; each exists once, here."""

from oadbench.components.aggregate import concat_levels, local_aggregate
from oadbench.components.blur import gaussian_blur, upsample_maps

__all__ = ["concat_levels", "gaussian_blur", "local_aggregate", "upsample_maps"]
