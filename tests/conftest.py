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
    "channelwise": dict(num_filters=8, latent_depth=8, hyperprior_depth=8,
                        num_slices=2, max_support_slices=1),
}
# A fixed seed per architecture: the same weights in every run.
TINY_SEEDS = {"factorized": 1, "hyperprior": 2, "channelwise": 3,
              "mean_scale_hyperprior": 4}


# Magnitudes of a trained model (see `give_trained_magnitudes`).
LATENT_GAIN = 60.0      # |y| up to ~100: symbols beyond the coding tables.
HYPER_GAIN = 4.0        # z mostly non-zero (up to ~150 for mean-scale models).
SCALE_INDEX = 32.0      # Predicted scales ~6: the larger symbols escape.
OUTPUT_GAIN = 8.0       # One latent step moves pixels by several levels.


def give_trained_magnitudes(model):
  """Scales an untrained model's weights (in place) to a trained model's ranges.

  Untrained tiny models have latents under 2 in magnitude, hyper-latents that
  all round to 0 and a synthesis that outputs ~0 (black after clipping): their
  round trips pass even when the encoder conditions on the unquantised z, or
  when symbols outside the coding tables (the range coder's escape path) are
  coded wrongly. Here the last analysis layer is scaled by LATENT_GAIN and
  the first synthesis layer by its inverse (the same model with a finer
  quantiser), the last hyper-analysis layer by HYPER_GAIN, the scale indexes
  shifted to predict scales of ~20, and the synthesis output stretched over
  the 0-255 range. Call before `update()` (the tables depend on the priors only).
  """
  def scale(variables, factor):
    for v in variables:
      v.assign(v * factor)

  def shift(bias, value, channels=None):
    channels = bias.shape[0] if channels is None else channels
    bias.assign_add(tf.pad(tf.fill([channels], value), [[0, bias.shape[0] - channels]]))

  import tensorflow as tf
  scale(model.analysis_transform._stack[-1].trainable_variables, LATENT_GAIN)
  first, last = model.synthesis_transform._stack[0], model.synthesis_transform._stack[-1]
  scale(first.kernel_parameter.trainable_variables, 1.0 / LATENT_GAIN)
  scale(last.kernel_parameter.trainable_variables, OUTPUT_GAIN)
  scale([last.bias_parameter], OUTPUT_GAIN)
  shift(last.bias_parameter, 0.5)
  if hasattr(model, "hyper_analysis_transform"):
    scale(model.hyper_analysis_transform._stack[-1].trainable_variables, HYPER_GAIN)
  if hasattr(model, "scale_transforms"):      # channelwise: one per slice
    for transform in model.scale_transforms:
      shift(transform._stack[-1].bias_parameter, SCALE_INDEX)
  elif hasattr(model, "hyper_synthesis_transform"):
    # Hyperprior: the scale indexes are the first latent_depth outputs.
    shift(model.hyper_synthesis_transform._stack[-1].bias_parameter, SCALE_INDEX,
          model.latent_depth)
  return model


@pytest.fixture(scope="session")
def tiny_models():
  """{architecture: frozen tiny model}, lazily built and cached.

  Seeded (the same weights in every run) and with the magnitudes of a trained
  model (`give_trained_magnitudes`).
  """
  import dpc_tf
  import tensorflow as tf

  class Models(dict):
    def __missing__(self, name):
      tf.keras.utils.set_random_seed(TINY_SEEDS[name])
      model = dpc_tf.create_model(name, **TINY_HPARAMS[name])
      give_trained_magnitudes(model).update()
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
