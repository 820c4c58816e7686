"""Linear SVMs per attribute folded into one Dense(40), with Platt calibration.

Paper Sec. 2.2 / Fig. 2(d): an SVM per attribute predicts from each patch's FC
feature and the final prediction averages over the patches. The SVMs are
trained with scikit-learn's LinearSVC (tfattr/stages/svm.py); their `coef_`
and `intercept_` are copied here so the exported graph needs no scikit-learn.
Scores are turned into probabilities with a per-attribute Platt sigmoid
p = sigmoid(platt_scale * score + platt_offset), fitted on held-out scores.
"""

import keras
import numpy as np
import tensorflow as tf

from tfattr.attributes import NUM_ATTRIBUTES

OUTPUT_SCORES = "attribute_scores"            # = tfattr.signatures.OUTPUT_ATTRIBUTE_SCORES
OUTPUT_PROBABILITIES = "attribute_probabilities"  # = tfattr.signatures.OUTPUT_ATTRIBUTE_PROBABILITIES


@keras.saving.register_keras_serializable(package="tfattr")
class AttributeSVMHead(keras.layers.Layer):
    """Per-patch linear SVM scores averaged over patches, plus Platt probabilities.

    Args:
      num_attributes: number of SVMs (40, the order of tfattr.attributes).

    Weights: `kernel` [F, num_attributes] (column a = LinearSVC coef_ of
    attribute a), `bias` [num_attributes], `platt_scale`, `platt_offset`
    [num_attributes] (initialised to 1 and 0). Not trainable by default: they
    are set with `set_svm` from the fitted classifiers.

    Call arguments:
      features: float [B, N, F] (N patches per face, e.g. the interweaved
        ANet pass) or [B, F] (one patch).

    Returns:
      dict with `attribute_scores` [B, num_attributes] float32 (mean over the
      N patches of w.x + b) and `attribute_probabilities` [B, num_attributes]
      float32 (Platt sigmoid of the mean score).
    """

    def __init__(self, num_attributes=NUM_ATTRIBUTES, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        num_attributes = int(num_attributes)
        if num_attributes <= 0:
            raise ValueError(f"num_attributes must be positive, got {num_attributes!r}")
        self.num_attributes = num_attributes

    def build(self, input_shape):
        if len(input_shape) not in (2, 3) or input_shape[-1] is None:
            raise ValueError(f"AttributeSVMHead expects [B, N, F] or [B, F] with known F, "
                             f"got {input_shape}")
        features = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(features, self.num_attributes),
                                      initializer="zeros", trainable=self.trainable)
        self.bias = self.add_weight(name="bias", shape=(self.num_attributes,),
                                    initializer="zeros", trainable=self.trainable)
        self.platt_scale = self.add_weight(name="platt_scale", shape=(self.num_attributes,),
                                           initializer="ones", trainable=self.trainable)
        self.platt_offset = self.add_weight(name="platt_offset", shape=(self.num_attributes,),
                                            initializer="zeros", trainable=self.trainable)

    def patch_scores(self, features):
        """[B, N, F] -> per-patch decision values [B, N, num_attributes] (float32)."""
        features = tf.cast(features, tf.float32)
        kernel = tf.cast(self.kernel, tf.float32)
        return tf.einsum("bnf,fa->bna", features, kernel) + tf.cast(self.bias, tf.float32)

    def call(self, features):
        features = tf.convert_to_tensor(features)
        if features.shape.rank == 2:
            features = features[:, tf.newaxis, :]
        scores = tf.reduce_mean(self.patch_scores(features), axis=1)
        logits = (tf.cast(self.platt_scale, tf.float32) * scores
                  + tf.cast(self.platt_offset, tf.float32))
        return {OUTPUT_SCORES: scores, OUTPUT_PROBABILITIES: tf.sigmoid(logits)}

    def compute_output_shape(self, input_shape):
        shape = (input_shape[0], self.num_attributes)
        return {OUTPUT_SCORES: shape, OUTPUT_PROBABILITIES: shape}

    def set_svm(self, coef, intercept, platt_scale=None, platt_offset=None):
        """Copies fitted SVMs in: coef [num_attributes, F] (LinearSVC.coef_ stacked),
        intercept [num_attributes], Platt parameters [num_attributes] (defaults 1, 0)."""
        coef = np.asarray(coef, np.float32)
        intercept = np.asarray(intercept, np.float32).reshape(-1)
        if not self.built:
            self.build((None, None, coef.shape[1]))
        if coef.shape != (self.num_attributes, self.kernel.shape[0]):
            raise ValueError(f"coef must be [{self.num_attributes}, {self.kernel.shape[0]}], "
                             f"got {coef.shape}")
        if intercept.shape != (self.num_attributes,):
            raise ValueError(f"intercept must be [{self.num_attributes}], got {intercept.shape}")
        self.kernel.assign(coef.T)
        self.bias.assign(intercept)
        self.platt_scale.assign(np.ones(self.num_attributes, np.float32) if platt_scale is None
                                else np.asarray(platt_scale, np.float32).reshape(-1))
        self.platt_offset.assign(np.zeros(self.num_attributes, np.float32) if platt_offset is None
                                 else np.asarray(platt_offset, np.float32).reshape(-1))

    def get_config(self):
        config = super().get_config()
        config.update({"num_attributes": self.num_attributes})
        return config
