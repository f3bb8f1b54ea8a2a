"""Shared fixtures: tiny models of every architecture, built once per worker."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

# Small enough to build and freeze in a few seconds; the same code paths as
# full-size models.
TINY_HPARAMS = {
    "factorized": dict(num_filters=8),
    "hyperprior": dict(num_filters=8),
    "mean_scale_hyperprior": dict(num_filters=8),
    "joint": dict(num_filters=8, latent_depth=8, hyperprior_depth=8,
                  num_slices=2, max_support_slices=1),
}


@pytest.fixture(scope="session")
def tiny_models():
  """{architecture: frozen tiny model}, lazily built and cached."""
  import dpc_tf

  class Models(dict):
    def __missing__(self, name):
      model = dpc_tf.create_model(name, **TINY_HPARAMS[name])
      model.update()
      self[name] = model
      return model

  return Models()


@pytest.fixture(scope="session")
def saved_models(tiny_models, tmp_path_factory):
  """{architecture: directory of the saved tiny model}."""
  import dpc_tf
  root = tmp_path_factory.mktemp("models")

  class Saved(dict):
    def __missing__(self, name):
      path = root / name
      dpc_tf.save_model(tiny_models[name], path)
      self[name] = path
      return path

  return Saved()


@pytest.fixture
def photo():
  """A real photo crop (scikit-image ships it), uint8 [48, 80, 3]."""
  from skimage import data
  return np.ascontiguousarray(data.astronaut()[100:148, 150:230])
