"""tf.data pipelines: shapes/dtypes, eager == tf.data, deterministic mode, identity batches."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfattr.data import pipeline, preprocess
from tfattr.data.celeba import load_celeba


@pytest.fixture(scope="module")
def data(synthetic_root):
    return load_celeba(synthetic_root)


def _eager_letterbox(path, size):
    image = preprocess.decode_image(tf.io.read_file(str(path)))
    return preprocess.letterbox(image, size)[0].numpy()


def test_whole_image_eval_equals_eager(data):
    idx = data.indices(0)[:6]
    paths = [data.wild_path(i) for i in idx]
    ds = pipeline.whole_image_dataset(paths, data.attributes[idx], 96, 4, training=False, deterministic=True)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    assert xs[0].shape == (4, 96, 96, 3) and xs[0].dtype == np.float32
    assert ys[0].shape == (4, 40) and ys[0].dtype == np.float32
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape[0] == 6  # evaluation keeps the last partial batch
    np.testing.assert_array_equal(y, data.attributes[idx].astype(np.float32))
    for k, p in enumerate(paths):
        np.testing.assert_array_equal(x[k], _eager_letterbox(p, 96))


def test_crop_eval_equals_eager(data):
    idx = data.indices(2)[:3]
    paths = [data.wild_path(i) for i in idx]
    boxes = preprocess.enlarge_box(data.bboxes[idx], 1.3).numpy()
    ds = pipeline.crop_dataset(paths, boxes, data.attributes[idx], 48, 8, training=False, deterministic=True)
    (x, y), = list(ds)
    assert x.shape == (3, 48, 48, 3) and x.dtype == tf.float32
    for k, p in enumerate(paths):
        image = preprocess.decode_image(tf.io.read_file(str(p)))
        np.testing.assert_array_equal(x[k].numpy(), preprocess.crop_and_resize(image, boxes[k:k + 1], 48)[0].numpy())


def test_augmentation_eager_equals_tf_data(data):
    path, box = str(data.wild_path(0)), data.bboxes[0]
    seed = tf.constant([[3, 4], [5, 6]], tf.int64)
    eager_crop = pipeline.crop_example(path, box, 40, True, seed).numpy()
    eager_whole = pipeline.whole_image_example(path, 64, True, seed).numpy()
    ds = tf.data.Dataset.from_tensors((path, box, seed)).map(
        lambda p, b, s: (pipeline.crop_example(p, b, 40, True, s), pipeline.whole_image_example(p, 64, True, s)))
    mapped_crop, mapped_whole = next(iter(ds))
    np.testing.assert_array_equal(eager_crop, mapped_crop.numpy())
    np.testing.assert_array_equal(eager_whole, mapped_whole.numpy())
    plain = pipeline.crop_example(path, box, 40, False).numpy()
    assert np.abs(eager_crop - plain).max() > 0.05  # augmentation did something
    assert eager_crop.min() >= -1.0 and eager_crop.max() <= 1.0


def _collect(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_training_deterministic_mode(data):
    idx = data.indices(0)[:24]
    paths = [data.wild_path(i) for i in idx]

    def make(seed):
        return pipeline.crop_dataset(paths, data.bboxes[idx], data.attributes[idx], 32, 8, training=True,
                                     seed=seed, deterministic=True)

    a, b, c = _collect(make(7)), _collect(make(7)), _collect(make(8))
    assert len(a) == 3 and a[0][0].shape == (8, 32, 32, 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # shuffled: not the file order
    assert not np.array_equal(np.concatenate([y for _, y in a]), data.attributes[idx].astype(np.float32))
    # training drops the partial batch
    ds = pipeline.whole_image_dataset(paths[:10], data.attributes[idx[:10]], 64, 4, training=True, seed=0,
                                      deterministic=True)
    assert [x.shape[0] for x, _ in ds] == [4, 4]


def test_identity_batches(tmp_path):
    # solid-colour images whose colour encodes the identity: labels must match pixels
    paths, ids = [], []
    for ident in range(6):
        for j in range(2 + ident % 3):
            p = tmp_path / f"{ident}_{j}.png"
            cv2.imwrite(str(p), np.full((20, 16, 3), 30 * ident + 5, np.uint8))
            paths.append(p)
            ids.append(100 + ident)
    ds = pipeline.identity_dataset(paths, ids, 8, identities_per_batch=3, images_per_identity=2, steps=5,
                                   training=False, seed=1, deterministic=True)
    unique, classes = pipeline.identity_classes(ids)
    assert list(unique) == list(range(100, 106))
    batches = _collect(ds)
    assert len(batches) == 5
    for x, y in batches:
        assert x.shape == (6, 8, 8, 3) and y.dtype == np.int32
        assert len(set(y.tolist())) == 3  # k distinct identities
        assert (y[0::2] == y[1::2]).all()  # m = 2 consecutive images each
        colour = np.round((x[:, 0, 0, 0] + 1) * 127.5)
        np.testing.assert_allclose(colour, 30 * y + 5, atol=1)
    again = _collect(pipeline.identity_dataset(paths, ids, 8, 3, 2, steps=5, training=False, seed=1,
                                               deterministic=True))
    for (xa, ya), (xb, yb) in zip(batches, again):
        np.testing.assert_array_equal(ya, yb)


def test_identity_batches_with_boxes_and_augmentation(data):
    paths = [data.wild_path(i) for i in range(len(data))]
    boxes = preprocess.enlarge_box(data.bboxes, 1.2).numpy()
    ds = pipeline.identity_dataset(paths, data.identities, 32, 4, 3, boxes=boxes, steps=2, training=True,
                                   seed=0, deterministic=True)
    for x, y in ds:
        assert x.shape == (12, 32, 32, 3)
        assert (y.numpy().reshape(4, 3) == y.numpy().reshape(4, 3)[:, :1]).all()


def test_background_dataset(data):
    paths = data.background_paths()
    ds = pipeline.background_dataset(paths, 64, 4)
    x = np.concatenate([b.numpy() for b in ds])
    assert x.shape == (len(paths), 64, 64, 3)
    np.testing.assert_array_equal(x[0], _eager_letterbox(paths[0], 64))
