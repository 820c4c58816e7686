"""Custom Keras 3 layers (all registered under package "tfattr")."""

from tfattr.layers.interweave import InterweavedANet, extract_patch_crops, patch_grid
from tfattr.layers.locally_shared import LocallySharedConv2D
from tfattr.layers.region_framer import RegionFramer

__all__ = ["InterweavedANet", "LocallySharedConv2D", "RegionFramer", "extract_patch_crops",
           "patch_grid"]
