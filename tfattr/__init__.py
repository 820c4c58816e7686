"""tfattr: face attributes in the wild (Liu et al., ICCV 2015) on TensorFlow 2 / Keras 3.

The public API, imported lazily so that `import tfattr` (and the data
generator) does not load TensorFlow:

- `ATTRIBUTE_NAMES`: the 40 attributes in output order.
- `get_preset(name)`: architecture sizes ("paper", "tiny").
- `load_celeba(root)`: the CelebA-layout readers (also synthetic data).
- `FaceAttributeModel`: the whole inference cascade (DESIGN.md pipeline).
- `build_model_from_workdir(workdir)`, `export_saved_model(model, out_dir)`.
- `AttributeClient(target)`: the TF Serving gRPC client.
"""

import importlib

_EXPORTS = {
    "ATTRIBUTE_NAMES": "tfattr.attributes",
    "get_preset": "tfattr.presets",
    "load_celeba": "tfattr.data.celeba",
    "FaceAttributeModel": "tfattr.models.cascade",
    "build_model_from_workdir": "tfattr.export",
    "export_saved_model": "tfattr.export",
    "AttributeClient": "tfattr.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tfattr' has no attribute {name!r}")
