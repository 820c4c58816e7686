"""Architecture presets by name: "paper" and "tiny" (docs/interfaces.md).

`get_preset(name) -> Preset`. `lnet_o`/`lnet_s` are `build_lnet` kwargs,
`anet` is `build_anet` kwargs. Geometry of the ANet patches (see
docs/networks.md): the enlarged face is resized to `face_region_size`
squared; patches of `patch_size` are cut at `range(0, R - P + 1, patch_stride)`
in both axes (row-major), `num_patches` of them. `patch_stride` must be a
multiple of ANet's `stride_unit` (total C1+C2 stride x C3 cell size) so the
interweaved pass equals the patch-by-patch one; `get_preset` checks it.
"""

import dataclasses

_ALEXNET = dict(
    stagewise_filters=(96, 256, 384, 384, 256),
    stagewise_kernel_sizes=(11, 5, 3, 3, 3),
    stagewise_strides=(4, 1, 1, 1, 1),
    stagewise_padding=("valid", "same", "same", "same", "same"),
    pool_size=3, pool_strides=2, pool_after=(1, 2),
)

_TINY_LNET = dict(
    stagewise_filters=(16, 32, 48, 48, 32),
    stagewise_kernel_sizes=(7, 5, 3, 3, 3),
    stagewise_strides=(2, 1, 1, 1, 1),
    stagewise_padding=("valid", "same", "same", "same", "same"),
    pool_size=3, pool_strides=2, pool_after=(1, 2),
    batch_norm=True,  # the plain ReLU stack barely leaves the label prior in a CPU budget
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """Architecture sizes. See the module docstring."""

    name: str
    lnet_o: dict
    lnet_s: dict
    lnet_o_input_size: int
    lnet_s_input_size: int
    anet: dict
    face_region_size: int
    patch_size: int
    patch_stride: int
    face_enlarge: float

    @property
    def patches_per_side(self):
        return (self.face_region_size - self.patch_size) // self.patch_stride + 1

    @property
    def num_patches(self):
        return self.patches_per_side ** 2

    def patch_offsets(self):
        """Top-left corners (y, x) of the patches in the face region, row-major."""
        starts = range(0, self.face_region_size - self.patch_size + 1, self.patch_stride)
        return [(y, x) for y in starts for x in starts]

    def validate(self):
        """Raises ValueError when the ANet/patch geometry is inconsistent."""
        from tfattr.models.anet import anet_geometry  # lazy: keeps presets import light

        if self.anet.get("patch_size") != self.patch_size:
            raise ValueError(f"preset {self.name!r}: anet patch_size "
                             f"{self.anet.get('patch_size')} != patch_size {self.patch_size}")
        if self.face_region_size < self.patch_size:
            raise ValueError(f"preset {self.name!r}: face_region_size {self.face_region_size} "
                             f"< patch_size {self.patch_size}")
        unit = anet_geometry(**self.anet).stride_unit[0]
        if self.patch_stride <= 0 or self.patch_stride % unit:
            raise ValueError(
                f"preset {self.name!r}: patch_stride {self.patch_stride} is not a positive "
                f"multiple of ANet's stride unit {unit} (total C1+C2 stride x C3 cell size)")
        return self


PRESETS = {
    # The paper's networks. LNets: AlexNet conv stacks on 227x227. ANet:
    # DeepID2-like, 64-px patches; 25 patches (5x5, stride 16 = 1/4 patch)
    # of a 128-px enlarged face region, heavily overlapping as in the paper.
    "paper": Preset(
        name="paper",
        lnet_o=dict(name="lnet_o", **_ALEXNET),
        lnet_s=dict(name="lnet_s", **_ALEXNET),
        lnet_o_input_size=227,
        lnet_s_input_size=227,
        anet=dict(name="anet", patch_size=64, stagewise_filters=(32, 48, 16, 16),
                  stagewise_kernel_sizes=(5, 3, 3, 3), stagewise_strides=(1, 1),
                  stagewise_grids=(3, 2), pool_size=2, fc_units=160),
        face_region_size=128,
        patch_size=64,
        patch_stride=16,
        face_enlarge=1.2,
    ),
    # Trains in minutes on a 2-core CPU (tests, demo). 9 patches (3x3) of
    # 40 px, stride 12, in a 64-px face region.
    "tiny": Preset(
        name="tiny",
        lnet_o=dict(name="lnet_o", **_TINY_LNET),
        lnet_s=dict(name="lnet_s", **_TINY_LNET),
        lnet_o_input_size=128,
        lnet_s_input_size=96,
        # BN: +0.8 points at 1,500 steps; (16, 48, 64, 64) + FC 128 instead of
        # (16, 32, 32, 32) + FC 64: +1.6 points at 3,000 steps (docs/training.md)
        anet=dict(name="anet", patch_size=40, stagewise_filters=(16, 48, 64, 64),
                  stagewise_kernel_sizes=(5, 3, 3, 3), stagewise_strides=(1, 1),
                  stagewise_grids=(2, 2), pool_size=2, fc_units=128,
                  batch_norm=True),
        face_region_size=64,
        patch_size=40,
        patch_stride=12,
        face_enlarge=1.2,
    ),
}


def get_preset(name):
    """The `Preset` called `name` ("paper" or "tiny"), validated."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return PRESETS[name].validate()
