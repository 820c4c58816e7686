"""Datasets (CelebA, LFWA, synthetic), tf.data pipelines and shared preprocessing.

Submodules are imported on demand (`from tfattr.data.celeba import load_celeba`)
so that reading label files does not import TensorFlow.
"""
