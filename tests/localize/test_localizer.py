import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattr.layers import resample
from tfattr.localize import localizer as loc
from tfattr.localize import peaks as peaks_lib
from tfattr.models.lnet import build_lnet
from tfattr.presets import get_preset


def ramp(height, width):
    """Pixel (y, x) holds its centre in edge coordinates: (y + 0.5, x + 0.5, 0)."""
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([ys, xs, np.zeros_like(ys)], -1).astype(np.float32)


@pytest.mark.parametrize("shape", [(101, 67), (40, 130), (128, 128)])
@pytest.mark.parametrize("static", [True, False])
def test_letterbox_mapping_is_exact(shape, static):
    size = 64
    image = ramp(*shape)
    if static:
        boxed, scale_yx = loc.letterbox_with_scales(image, size)
    else:
        fn = tf.function(lambda im: loc.letterbox_with_scales(im, size),
                         input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
        boxed, scale_yx = fn(image)
    boxed, scale_yx = boxed.numpy(), scale_yx.numpy()
    new_h = int(round(shape[0] * scale_yx[0]))
    new_w = int(round(shape[1] * scale_yx[1]))
    # Letterbox pixel centre (i + 0.5) / scale = the input point its (antialiasing)
    # kernel is centred on. The kernel sampled at whole pixels is not exactly symmetric,
    # so a ramp is reproduced to ~0.06 px; a single rounded scale for both axes, or the
    # pixel-index convention, is off by 0.3 - 0.7 px on the non-square shapes.
    margin = 3
    ys = np.arange(margin, new_h - margin) + 0.5
    xs = np.arange(margin, new_w - margin) + 0.5
    got = boxed[margin:new_h - margin, margin:new_w - margin]
    np.testing.assert_allclose(got[..., 0], np.repeat((ys / scale_yx[0])[:, None], len(xs), 1),
                               atol=0.1)
    np.testing.assert_allclose(got[..., 1], np.repeat((xs / scale_yx[1])[None, :], len(ys), 0),
                               atol=0.1)


def test_crop_mapping_is_exact():
    image = ramp(90, 120)
    regions = np.array([[10.0, 20.0, 58.0, 68.0], [-5.0, 60.5, 30.25, 95.75]], np.float32)
    size = 16
    crops = resample.crop_and_resize(image, loc.crop_boxes_for_sampling(regions, size), size)
    centres = np.arange(size) + 0.5
    crop_pts = np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
    for k, region in enumerate(regions):
        pts = np.concatenate([crop_pts, crop_pts], 1)  # zero-size boxes at pixel centres
        mapped = loc.crop_to_image(pts, region[None], size).numpy()
        values = crops[k].numpy().reshape(-1, 3)[:, :2]
        inside = (mapped[:, 0] > 0.5) & (mapped[:, 0] < 89.5) & (mapped[:, 1] > 0.5) & (mapped[:, 1] < 119.5)
        assert inside.sum() > 50
        np.testing.assert_allclose(values[inside], mapped[inside, :2], atol=1e-3)


@pytest.fixture(scope="module")
def tiny_localizer():
    keras.utils.set_random_seed(0)
    preset = get_preset("tiny")
    return loc.FaceLocalizer(build_lnet(**preset.lnet_o), build_lnet(**preset.lnet_s),
                             preset.lnet_o_input_size, preset.lnet_s_input_size,
                             threshold=0.0, max_faces=3)


def test_runs_in_tf_function_with_unknown_image_size(tiny_localizer):
    fn = tf.function(tiny_localizer.call,
                     input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    for shape in [(75, 140), (200, 90)]:
        image = tf.random.uniform(shape + (3,), -1, 1, seed=1)
        boxes, scores, num = fn(image)
        assert boxes.shape == (3, 4) and scores.shape == (3,) and num.shape == ()
        eager = tiny_localizer(image)
        np.testing.assert_allclose(boxes.numpy(), eager[0].numpy(), rtol=1e-4, atol=1e-3)
        valid = scores.numpy() > 0
        assert valid[0]
        # Boxes are ordered by score and are proper boxes.
        assert np.all(np.diff(scores.numpy()[valid]) <= 0)
        b = boxes.numpy()[valid]
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert 0 <= int(num) <= 3


def test_threshold_controls_num_faces(tiny_localizer):
    image = tf.random.uniform((80, 80, 3), -1, 1, seed=2)
    out = tiny_localizer.localize(image)
    scores = out["box_scores"].numpy()[out["valid"].numpy()]
    tiny_localizer.set_threshold(float(scores.max()) + 1.0)
    assert int(tiny_localizer(image)[2]) == 0
    tiny_localizer.set_threshold(float(scores.min()))
    assert int(tiny_localizer(image)[2]) == len(scores)
    tiny_localizer.set_threshold(0.0)


def test_box_iou():
    a = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    np.testing.assert_allclose(loc.box_iou(a, b).numpy(), [[1 / 7, 1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("max_faces,extent", [(1, 0.0), (3, 0.0), (6, 0.0), (3, 0.3)])
def test_lnet_s_on_valid_proposals_equals_all_proposals(tiny_localizer, max_faces, extent):
    """LNet_s on the valid proposals only (server graph) == on all K (static TFLite form)."""
    loc_k = loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s,
                              tiny_localizer.lnet_o_input_size, tiny_localizer.lnet_s_input_size,
                              threshold=0.0, max_faces=max_faces, o_extent_fraction=extent,
                              s_extent_fraction=extent)
    spec = [tf.TensorSpec([None, None, 3], tf.float32)]
    fast = tf.function(loc_k.localize, input_signature=spec)
    plain = tf.function(lambda im: loc_k.localize(im, lite=True), input_signature=spec)
    proposals = tf.function(lambda im: loc_k.head_shoulder_windows(im)["valid"],
                            input_signature=spec)
    rng = np.random.default_rng(max_faces)
    images = [rng.uniform(-1, 1, (90, 130, 3)).astype(np.float32),
              tf.image.resize(rng.uniform(-1, 1, (1, 6, 6, 3)), [120, 100]).numpy()[0],
              np.zeros((70, 70, 3), np.float32)]  # flat: one separated peak
    num_valid = []
    for image in images:
        a, b = fast(image), plain(image)
        for key in ("valid", "num_faces"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
        for key in ("boxes", "box_scores", "regions"):
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-4, atol=1e-3,
                                       err_msg=key)
        valid = a["valid"].numpy()
        np.testing.assert_allclose(a["s_maps"].numpy()[valid], b["s_maps"].numpy()[valid],
                                   rtol=1e-4, atol=1e-5)
        num_valid.append(int(proposals(image).numpy().sum()))
    assert num_valid[-1] == 1 or max_faces == 1, num_valid  # the flat image skips K - 1 crops


def test_no_valid_proposal_runs_no_crop(tiny_localizer):
    image = tf.random.uniform((60, 60, 3), -1, 1, seed=3)
    regions = tf.constant([[0.0, 0.0, 50.0, 50.0]] * 3)
    boxes, scores, maps = tiny_localizer.face_windows(image, regions, tf.zeros([3], tf.bool))
    assert not np.any(boxes.numpy()) and not np.any(scores.numpy()) and not np.any(maps.numpy())
    assert maps.shape == (3, *tiny_localizer.s_map_size)
    one = tiny_localizer.face_windows(image, regions, tf.constant([False, True, False]))
    every = tiny_localizer.face_windows(image, regions)
    np.testing.assert_allclose(one[0].numpy()[1], every[0].numpy()[1], rtol=1e-5, atol=1e-4)
    assert not np.any(one[0].numpy()[[0, 2]])


def test_faces_only_skips_proposals_below_the_threshold(tiny_localizer):
    """faces_only: LNet_s only on valid proposals whose LNet_o score reaches the threshold;
    num_faces and the first num_faces boxes/scores equal LNet_s on every proposal."""
    loc_k = loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s,
                              tiny_localizer.lnet_o_input_size, tiny_localizer.lnet_s_input_size,
                              threshold=0.0, max_faces=4)
    spec = [tf.TensorSpec([None, None, 3], tf.float32)]
    fast = tf.function(lambda im: loc_k.localize(im, faces_only=True), input_signature=spec)
    plain = tf.function(lambda im: loc_k.localize(im, lite=True), input_signature=spec)
    rng = np.random.default_rng(11)
    image = tf.image.resize(rng.uniform(-1, 1, (1, 7, 9, 3)), [100, 130]).numpy()[0]
    scores = plain(image)["box_scores"].numpy()
    assert (scores > 0).sum() >= 2, scores
    proposals = loc_k.head_shoulder_windows(image)
    seen = set()
    for threshold in [0.0, *((scores[:-1] + scores[1:]) / 2), scores[0] + 1.0]:
        loc_k.set_threshold(float(threshold))
        a, b = fast(image), plain(image)
        n = int(b["num_faces"])
        seen.add(n)
        assert int(a["num_faces"]) == n
        np.testing.assert_allclose(a["boxes"].numpy()[:n], b["boxes"].numpy()[:n],
                                   rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(a["box_scores"].numpy()[:n], b["box_scores"].numpy()[:n],
                                   rtol=1e-6)
        # Only the valid proposals reaching the threshold got an LNet_s map.
        refined = (proposals["valid"].numpy() & (proposals["o_scores"].numpy() >= threshold)).sum()
        assert (np.abs(a["s_maps"].numpy()).sum(axis=(1, 2)) > 0).sum() <= refined
        if n == 0:
            assert refined == 0 and not np.any(a["s_maps"].numpy())
    assert 0 in seen and max(seen) >= 2, seen


def test_extent_windows_equal_a_numpy_reference(tiny_localizer):
    """o_extent_fraction: per peak, the allowed window maximising sum - level * area
    (level = min + f * (peak - min)), reported with its mean response."""
    fraction = 0.35
    loc_k = loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s,
                              tiny_localizer.lnet_o_input_size, tiny_localizer.lnet_s_input_size,
                              max_faces=3, o_extent_fraction=fraction, min_peak_separation=1.0)
    rng = np.random.default_rng(5)
    image = tf.image.resize(rng.uniform(-1, 1, (1, 5, 7, 3)), [110, 150]).numpy()[0]
    out = loc_k.head_shoulder_windows(image)
    o_map = out["o_map"].numpy()
    peaks = peaks_lib.density_peaks(o_map, 3, 1.0)
    pos, valid = peaks["positions"].numpy(), peaks["valid"].numpy()
    assert valid.sum() >= 2, valid
    h, w = o_map.shape
    windows_ref = []  # (y0, x0, y1, x1, sum)
    for wh, ww in loc_k.o_window_sizes:
        for y in range(h - wh + 1):
            for x in range(w - ww + 1):
                windows_ref.append((y, x, y + wh, x + ww, o_map[y:y + wh, x:x + ww].sum()))
    ref = np.array(windows_ref)
    area = (ref[:, 2] - ref[:, 0]) * (ref[:, 3] - ref[:, 1])

    def contains(p):
        return (ref[:, 0] <= p[0]) & (p[0] < ref[:, 2]) & (ref[:, 1] <= p[1]) & (p[1] < ref[:, 3])

    for k in np.flatnonzero(valid):
        level = o_map.min() + fraction * (o_map.max() * float(peaks["rho"][k]) - o_map.min())
        allowed = contains(pos[k])
        for j in range(k):
            allowed &= ~contains(pos[j])
        best = np.argmax(np.where(allowed, ref[:, 4] - level * area, -np.inf))
        np.testing.assert_allclose(out["o_scores"].numpy()[k], ref[best, 4] / area[best], rtol=1e-4)


def test_config_round_trip_and_configs_from_before_the_extent_rule(tiny_localizer):
    config = tiny_localizer.get_config()
    assert loc.FaceLocalizer.from_config(config).o_extent_fraction == tiny_localizer.o_extent_fraction
    config = dict(tiny_localizer.get_config())
    config.pop("o_extent_fraction")  # a model saved before the rule: the old window choice
    assert loc.FaceLocalizer.from_config(config).o_extent_fraction == 0.0
    with pytest.raises(ValueError, match="o_extent_fraction"):
        loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s, 128, 96, o_extent_fraction=1.0)


def test_cascade_box_score_is_lnet_o_times_lnet_s(tiny_localizer):
    """box_score="cascade": each box's score is its LNet_o window score times LNet_s'
    face-window score, computed here stage by stage; ranking, the threshold and the
    valid-only / static (TFLite) / faces_only forms all use it."""
    def build(**kwargs):
        return loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s,
                                 tiny_localizer.lnet_o_input_size,
                                 tiny_localizer.lnet_s_input_size, max_faces=3, **kwargs)

    cascade = build(box_score="cascade")
    assert cascade.window_config()["box_score"] == "cascade"
    assert loc.FaceLocalizer.from_config(cascade.get_config()).box_score == "cascade"
    config = dict(cascade.get_config())
    config.pop("box_score")  # a model saved before the option: LNet_o's score
    assert loc.FaceLocalizer.from_config(config).box_score == "lnet_o"
    with pytest.raises(ValueError, match="box_score"):
        build(box_score="lnet_s")
    spec = [tf.TensorSpec([None, None, 3], tf.float32)]
    fast = tf.function(cascade.localize, input_signature=spec)
    static = tf.function(lambda im: cascade.localize(im, lite=True), input_signature=spec)
    faces_only = tf.function(lambda im: cascade.localize(im, faces_only=True), input_signature=spec)
    rng = np.random.default_rng(5)
    checked = 0
    for image in [tf.image.resize(rng.uniform(-1, 1, (1, 7, 9, 3)), [100, 130]).numpy()[0],
                  rng.uniform(-1, 1, (90, 120, 3)).astype(np.float32)]:
        stages = cascade.head_shoulder_windows(image)
        s_boxes, s_scores, _ = cascade.face_windows(image, stages["regions"])
        valid = stages["valid"].numpy()
        product = stages["o_scores"].numpy() * s_scores.numpy()
        out = fast(image)
        kept = out["valid"].numpy()
        for box, score in zip(out["boxes"].numpy()[kept], out["box_scores"].numpy()[kept]):
            k = int(np.argmin(np.abs(s_boxes.numpy() - box).sum(1)))
            assert valid[k]
            np.testing.assert_allclose(score, product[k], rtol=1e-5, atol=1e-7)
            checked += 1
        assert np.all(np.diff(out["box_scores"].numpy()[kept]) <= 0)
        plain = build()(image)[1].numpy()  # LNet_o's score alone differs
        assert not np.allclose(plain[kept], out["box_scores"].numpy()[kept])
        cascade.set_threshold(float(np.median(product[valid])))
        for other in (static(image), faces_only(image)):
            assert int(other["num_faces"]) == int(fast(image)["num_faces"])
            np.testing.assert_allclose(other["box_scores"].numpy(), out["box_scores"].numpy(),
                                       rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(other["boxes"].numpy(), out["boxes"].numpy(),
                                       rtol=1e-4, atol=1e-3)
        cascade.set_threshold(0.0)
    assert checked >= 2


def test_face_tag_map_is_the_weighted_c5_sum(tiny_localizer):
    """`o_map_weights` (lnet.o_map=face_tag): LNet_o's map is ReLU(C5 . w); with uniform
    weights 1/C it is the averaged C5 map, so the whole cascade gives the same boxes."""
    lnet_o, lnet_s = tiny_localizer.lnet_o, tiny_localizer.lnet_s
    channels = int(lnet_o.output["features"].shape[-1])
    image = np.random.default_rng(5).uniform(-1, 1, (90, 140, 3)).astype(np.float32)
    boxed = loc.letterbox_with_scales(image, 128)[0][tf.newaxis]
    features = lnet_o(boxed, training=False)["features"].numpy()

    weights = np.random.default_rng(6).normal(size=channels).astype(np.float32)
    cam = loc.FaceLocalizer(lnet_o, lnet_s, 128, 96, o_map_weights=weights)
    np.testing.assert_allclose(cam.lnet_o_map(boxed).numpy(),
                               np.maximum((features * weights).sum(-1), 0), rtol=1e-4, atol=1e-5)

    uniform = loc.FaceLocalizer(lnet_o, lnet_s, 128, 96, max_faces=3,
                                o_map_weights=np.full(channels, 1.0 / channels))
    got, want = uniform.localize(image), tiny_localizer.localize(image)
    np.testing.assert_allclose(got["o_map"].numpy(), want["o_map"].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"].numpy(), rtol=1e-4, atol=1e-3)

    restored = loc.FaceLocalizer.from_config(cam.get_config())
    assert restored.o_map_weights == cam.o_map_weights and cam.window_config()["o_map_weights"]
    assert tiny_localizer.window_config()["o_map_weights"] is None
    with pytest.raises(ValueError, match="o_map_weights"):
        loc.FaceLocalizer(lnet_o, lnet_s, 128, 96, o_map_weights=weights[:-1])


def test_lnet_o_ensemble_map_is_the_mean_of_its_members_maps(tiny_localizer):
    """A list of LNet_o backbones (lnet.o_ensemble): the map is the mean of the members'
    averaged C5 maps, or ReLU of the mean of their face-tag sums; a one-member list is the
    single backbone, and two copies of one backbone give its boxes."""
    preset = get_preset("tiny")
    lnet_o, lnet_s = tiny_localizer.lnet_o, tiny_localizer.lnet_s
    keras.utils.set_random_seed(7)
    other = build_lnet(**preset.lnet_o)
    channels = int(lnet_o.output["features"].shape[-1])
    image = np.random.default_rng(8).uniform(-1, 1, (100, 130, 3)).astype(np.float32)
    boxed = loc.letterbox_with_scales(image, 128)[0][tf.newaxis]
    feats = [m(boxed, training=False)["features"].numpy() for m in (lnet_o, other)]

    mean_map = loc.FaceLocalizer([lnet_o, other], lnet_s, 128, 96)
    np.testing.assert_allclose(mean_map.lnet_o_map(boxed).numpy(),
                               (feats[0].mean(-1) + feats[1].mean(-1)) / 2, rtol=1e-4, atol=1e-6)
    weights = np.random.default_rng(9).normal(size=2 * channels).astype(np.float32)
    cam = loc.FaceLocalizer([lnet_o, other], lnet_s, 128, 96, o_map_weights=weights)
    want = np.maximum(((feats[0] * weights[:channels]).sum(-1)
                       + (feats[1] * weights[channels:]).sum(-1)) / 2, 0)
    np.testing.assert_allclose(cam.lnet_o_map(boxed).numpy(), want, rtol=1e-4, atol=1e-5)

    single = loc.FaceLocalizer([lnet_o], lnet_s, 128, 96, max_faces=3)
    twice = loc.FaceLocalizer([lnet_o, lnet_o], lnet_s, 128, 96, max_faces=3)
    want = tiny_localizer.localize(image)
    for got in (single.localize(image), twice.localize(image)):
        np.testing.assert_allclose(got["o_map"].numpy(), want["o_map"].numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"].numpy(), atol=1e-3)

    restored = loc.FaceLocalizer.from_config(cam.get_config())
    assert len(restored.lnet_o_members) == 2 and restored.o_map_weights == cam.o_map_weights
    with pytest.raises(ValueError, match="o_map_weights"):
        loc.FaceLocalizer([lnet_o, other], lnet_s, 128, 96, o_map_weights=weights[:channels])
    with pytest.raises(ValueError, match="one architecture"):
        loc.FaceLocalizer([lnet_o, build_lnet(**{**preset.lnet_o, "batch_norm": False})],
                          lnet_s, 128, 96)


@pytest.mark.parametrize("lite", [False, True])
def test_face_box_scale_stretches_lnet_s_box_about_its_centre(tiny_localizer, lite):
    """s_box_scale / s_box_aspect: the same window, heights x scale * sqrt(aspect) and
    widths x scale / sqrt(aspect) about its centre; scores and face counts unchanged."""
    def build(**kwargs):
        return loc.FaceLocalizer(tiny_localizer.lnet_o, tiny_localizer.lnet_s, 128, 96,
                                 max_faces=1, s_extent_fraction=0.3, **kwargs)
    plain, stretched = build(), build(s_box_scale=1.15, s_box_aspect=1.3)
    image = np.random.default_rng(7).uniform(-1, 1, (100, 150, 3)).astype(np.float32)
    a, b = plain.localize(image, lite=lite), stretched.localize(image, lite=lite)
    box = a["boxes"].numpy()[0]
    centre, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
    size = size * 1.15 * np.array([np.sqrt(1.3), 1 / np.sqrt(1.3)])
    np.testing.assert_allclose(b["boxes"].numpy()[0], np.r_[centre - size / 2, centre + size / 2],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(b["box_scores"].numpy(), a["box_scores"].numpy(), rtol=1e-6)
    assert int(b["num_faces"]) == int(a["num_faces"])

    assert loc.FaceLocalizer.from_config(stretched.get_config()).window_config()["s_box_aspect"] == 1.3
    config = dict(stretched.get_config())
    config.pop("s_box_scale"), config.pop("s_box_aspect")  # saved before the option
    assert loc.FaceLocalizer.from_config(config).s_box_scale == 1.0
    with pytest.raises(ValueError, match="s_box_scale"):
        build(s_box_scale=0.0)


def test_box_codes_round_trip_and_match_numpy():
    rng = np.random.default_rng(11)
    regions = np.c_[rng.uniform(0, 50, (6, 2)), np.zeros((6, 2))].astype(np.float32)
    side = rng.uniform(40, 120, 6).astype(np.float32)
    regions[:, 2:] = regions[:, :2] + side[:, None]
    centre = regions[:, :2] + rng.uniform(0.2, 0.8, (6, 2)) * side[:, None]
    size = rng.uniform(0.2, 0.6, (6, 2)) * side[:, None]
    boxes = np.c_[centre - size / 2, centre + size / 2].astype(np.float32)
    codes = loc.encode_boxes(boxes, regions).numpy()
    want = np.c_[(centre - regions[:, :2]) / side[:, None], np.log(size / side[:, None])]
    np.testing.assert_allclose(codes, want, rtol=1e-5, atol=1e-5)
    back = loc.decode_box_codes(codes).numpy() * side[:, None] + np.tile(regions[:, :2], 2)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("lite", [False, True])
def test_box_head_boxes_equal_the_plain_regression_on_each_crop(tiny_localizer, lite):
    """`s_box_head`: each face box is the head's code on LNet_s' C5 features of its crop,
    decoded and mapped back through the crop; the dominant score is the window cascade's
    (the head only moves boxes); on the server and lite paths; config round trip."""
    from tfattr.models.lnet import build_box_head

    lnet_o, lnet_s = tiny_localizer.lnet_o, tiny_localizer.lnet_s
    keras.utils.set_random_seed(3)
    head = build_box_head((*tiny_localizer.s_map_size, int(lnet_s.output["features"].shape[-1])))
    last = head.get_layer(f"{head.name}_box")
    kernel, _ = last.get_weights()
    last.set_weights([kernel * 0.01, np.array([0.5, 0.45, np.log(0.4), np.log(0.3)], np.float32)])

    def build(**kwargs):
        return loc.FaceLocalizer(lnet_o, lnet_s, 128, 96, max_faces=3, threshold=0.0,
                                 s_box_scale=1.2, **kwargs)
    plain, regressed = build(), build(s_box_head=head)
    image = np.random.default_rng(8).uniform(-1, 1, (110, 160, 3)).astype(np.float32)
    a, b = plain.localize(image, lite=lite), regressed.localize(image, lite=lite)
    # Scores are LNet_o's: the dominant one is unchanged (later slots may differ, as
    # duplicate suppression sees the moved boxes).
    np.testing.assert_allclose(b["box_scores"].numpy()[0], a["box_scores"].numpy()[0], rtol=1e-6)
    valid = b["valid"].numpy()
    assert valid.any()
    regions = b["regions"].numpy()[valid]
    crops = np.stack([resample.crop_and_resize(
        tf.constant(image), loc.crop_boxes_for_sampling(r[None], 96), 96)[0].numpy()
        for r in regions])
    codes = head(lnet_s(crops, training=False)["features"], training=False).numpy()
    side = regions[:, 2:3] - regions[:, 0:1]
    centre = regions[:, :2] + codes[:, :2] * side
    half = np.exp(codes[:, 2:]) * side / 2
    np.testing.assert_allclose(b["boxes"].numpy()[valid], np.c_[centre - half, centre + half],
                               rtol=1e-4, atol=2e-2)

    restored = loc.FaceLocalizer.from_config(regressed.get_config())  # architecture only
    assert restored.window_config()["s_box_head"] is True
    for name in ("lnet_o", "lnet_s", "s_box_head"):
        getattr(restored, name).set_weights(getattr(regressed, name).get_weights())
    assert plain.window_config()["s_box_head"] is False
    np.testing.assert_allclose(restored.localize(image, lite=lite)["boxes"].numpy(),
                               b["boxes"].numpy(), rtol=1e-5, atol=1e-3)
    wrong = build_box_head((5, 5, 8))
    with pytest.raises(ValueError, match="s_box_head"):
        build(s_box_head=wrong)

    # s_box_refine_code: the same regression once more, on the crop re-made around each box.
    code = (0.45, 0.5, np.log(0.55), np.log(0.45))
    refined = build(s_box_head=head, s_box_refine_code=code).localize(image, lite=lite)
    np.testing.assert_allclose(refined["box_scores"].numpy(), b["box_scores"].numpy(), rtol=1e-6)
    first = np.c_[centre - half, centre + half].astype(np.float32)
    again = loc.regions_at_code(first, code).numpy()
    crops = np.stack([resample.crop_and_resize(
        tf.constant(image), loc.crop_boxes_for_sampling(r[None], 96), 96)[0].numpy()
        for r in again])
    codes = head(lnet_s(crops, training=False)["features"], training=False).numpy()
    side = again[:, 2:3] - again[:, 0:1]
    centre, half = again[:, :2] + codes[:, :2] * side, np.exp(codes[:, 2:]) * side / 2
    np.testing.assert_allclose(refined["boxes"].numpy()[refined["valid"].numpy()],
                               np.c_[centre - half, centre + half], rtol=1e-4, atol=5e-2)
    assert restored.window_config()["s_box_refine_code"] is None
    config = build(s_box_head=head, s_box_refine_code=code).get_config()
    assert loc.FaceLocalizer.from_config(config).s_box_refine_code == pytest.approx(code)
    with pytest.raises(ValueError, match="s_box_refine_code"):
        build(s_box_head=head, s_box_refine_code=(0.5, 0.5, np.nan, 0.0))


def test_regions_at_code_put_the_box_at_the_code():
    boxes = np.array([[10, 20, 50, 50], [0, 0, 100, 60], [5.5, 7.5, 9.5, 10.5]], np.float32)
    code = (0.45, 0.55, np.log(0.6), 0.0)
    regions = loc.regions_at_code(boxes, code).numpy()
    np.testing.assert_allclose(regions[:, 2] - regions[:, 0], regions[:, 3] - regions[:, 1],
                               rtol=1e-6)  # square
    got = loc.encode_boxes(boxes, regions).numpy()
    np.testing.assert_allclose(got[:, :3], np.tile(code[:3], (3, 1)), rtol=1e-5, atol=1e-5)
