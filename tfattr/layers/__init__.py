"""Custom Keras 3 layers (all registered under package "tfattr")."""

from tfattr.layers.locally_shared import LocallySharedConv2D

__all__ = ["LocallySharedConv2D"]
