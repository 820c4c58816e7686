import dataclasses

import pytest

from tfattr.models.anet import anet_geometry
from tfattr.presets import PRESETS, Preset, get_preset


def conv_macs(preset):
    """Multiply-accumulates of ANet on one patch, per layer (from the geometry)."""
    a = preset.anet
    g = anet_geometry(**a)
    f1, f2, f3, f4 = a["stagewise_filters"]
    k1, k2, k3, k4 = a["stagewise_kernel_sizes"]
    return {
        "c1": g.conv1_size ** 2 * k1 * k1 * 3 * f1,
        "c2": g.conv2_size ** 2 * k2 * k2 * f1 * f2,
        "c3": g.conv3_size ** 2 * k3 * k3 * f2 * f3,
        "c4": g.conv4_size ** 2 * k4 * k4 * f3 * f4,
        "fc": g.conv4_size ** 2 * f4 * a["fc_units"],
    }


def test_names_and_unknown():
    assert set(PRESETS) == {"paper", "tiny"}
    for name in PRESETS:
        preset = get_preset(name)
        assert isinstance(preset, Preset) and preset.name == name
    with pytest.raises(ValueError, match=r"Unknown preset 'huge'.*paper.*tiny"):
        get_preset("huge")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("tiny").patch_size = 3


@pytest.mark.parametrize("name,num_patches", [("tiny", 9), ("paper", 25)])
def test_patch_geometry(name, num_patches):
    preset = get_preset(name)
    assert preset.num_patches == num_patches == len(preset.patch_offsets())
    assert preset.anet["patch_size"] == preset.patch_size
    geo = anet_geometry(**preset.anet)
    # the alignment condition of the interweaved pass
    assert preset.patch_stride % (geo.total_stride * geo.conv3_cell[0]) == 0
    assert preset.patch_stride < preset.patch_size  # overlapping patches
    assert preset.face_region_size > preset.patch_size
    assert preset.face_enlarge > 1.0


def test_paper_sizes():
    p = get_preset("paper")
    for lnet in (p.lnet_o, p.lnet_s):
        assert lnet["stagewise_filters"] == (96, 256, 384, 384, 256)
        assert lnet["stagewise_kernel_sizes"] == (11, 5, 3, 3, 3)
        assert lnet["stagewise_strides"][0] == 4
    assert p.lnet_s_input_size == 227 and p.lnet_o_input_size == 227
    assert p.num_patches >= 9
    # C1/C2 dominate ANet's FLOPs, so the interweaved pass (which shares them) pays
    macs = conv_macs(p)
    assert (macs["c1"] + macs["c2"]) / sum(macs.values()) > 0.8


def test_tiny_is_small():
    t = get_preset("tiny")
    assert 96 <= t.lnet_o_input_size <= 128 and 96 <= t.lnet_s_input_size <= 128
    assert max(t.lnet_o["stagewise_filters"]) <= 48
    assert 32 <= t.patch_size <= 40 and 48 <= t.face_region_size <= 64
    assert 4 <= t.num_patches <= 9


def test_validation_errors():
    base = get_preset("tiny")
    with pytest.raises(ValueError, match="patch_stride 8 is not a positive multiple of ANet's "
                                         "stride unit 12"):
        dataclasses.replace(base, patch_stride=8).validate()
    with pytest.raises(ValueError, match="anet patch_size"):
        dataclasses.replace(base, patch_size=32).validate()
    with pytest.raises(ValueError, match="face_region_size"):
        dataclasses.replace(base, face_region_size=32).validate()
