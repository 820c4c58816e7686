"""ANet and LNet builders (the cascade lives in tfattr/models/cascade.py)."""

from tfattr.models.anet import (InterweavedANet, anet_geometry, build_anet,
                                 extract_patch_crops, rebuild_anet)
from tfattr.models.lnet import (LNetClassifier, MapGeometry, build_lnet,
                                response_map_geometry, response_map_size,
                                response_map_stride)

__all__ = [
    "InterweavedANet", "LNetClassifier", "MapGeometry", "anet_geometry", "extract_patch_crops",
    "rebuild_anet", "build_anet", "build_lnet",
    "response_map_geometry", "response_map_size", "response_map_stride",
]
