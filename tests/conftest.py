"""Shared pytest fixtures."""

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic CelebA-layout dataset (24 identities x 6 images, seed 0), made once
    per test session; returns its Path (load it with tfattr.data.celeba.load_celeba)."""
    from tfattr.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(root, num_identities=24, images_per_identity=6, seed=0, num_backgrounds=6,
                     progress=False)
    return root
