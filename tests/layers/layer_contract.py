"""Layer contract checks (modeled on keras-hub's `run_layer_test`), shared by
the tests in tests/layers/. Not a test module itself."""

import json

import keras
import numpy as np
import tensorflow as tf


def config_json(obj):
    return json.dumps(obj.get_config(), sort_keys=True, default=str)


def check_config_round_trip(layer):
    """from_config(get_config()) gives the identical JSON config."""
    config = layer.get_config()
    expected = json.dumps(config, sort_keys=True, default=str)
    clone = type(layer).from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == expected
    assert json.dumps(config, sort_keys=True, default=str) == expected  # not mutated
    return clone


def check_symbolic_shape(layer, input_shape):
    """Symbolic (functional) output shape == compute_output_shape."""
    inputs = keras.Input(batch_shape=input_shape)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == tuple(layer.compute_output_shape(input_shape))
    return keras.Model(inputs, outputs)


def check_gradients(model, x):
    """Every trainable variable gets a non-None, finite gradient."""
    with tf.GradientTape() as tape:
        y = model(x, training=True)
        loss = tf.reduce_mean(tf.square(y))
    grads = tape.gradient(loss, model.trainable_variables)
    assert model.trainable_variables
    for var, grad in zip(model.trainable_variables, grads):
        assert grad is not None, var.path
        assert np.all(np.isfinite(np.asarray(grad))), var.path
        assert np.any(np.asarray(grad) != 0), var.path


def check_fit_step(model, x):
    """One SGD fit step runs and gives a finite loss."""
    y = np.asarray(model(x)) * 0.5
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    history = model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def check_keras_save_load(model, x, tmp_path):
    """`.keras` save + load gives identical outputs."""
    expected = np.asarray(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), expected)
    return loaded
