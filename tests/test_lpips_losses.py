"""The "lpips" and "dpc" distortions built on perceptual.LPIPS."""

import json

import numpy as np
import pytest
import tensorflow as tf

import perceptual
from perceptual import testing


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp("lpips") / "lpips_alex_v0.1.npz"
  testing.write_seeded_weights_file(path, "alex", seed=0)
  return path


def photo_pairs():
  """Two 64x64 photo crops and a noisier copy of each, in [0, 1]."""
  import skimage.data
  x = np.stack([skimage.data.astronaut()[100:164, 200:264],
                skimage.data.coffee()[150:214, 250:314]]).astype(np.float32) / 255
  noise = np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
  return x, x + noise  # x_hat is unclipped, as a decoder's output in training


def test_registered_by_name(weights):
  assert {"lpips", "dpc"} <= set(perceptual.available_distortions())
  loss = perceptual.get_distortion("dpc", alpha=0.25, trunk="alex",
                                   weights_path=weights)
  assert isinstance(loss, perceptual.DPCLoss)
  assert loss.alpha == 0.25
  assert isinstance(perceptual.get_distortion("lpips", weights_path=weights),
                    perceptual.LPIPSLoss)


def test_lpips_loss_is_the_lpips_distance(weights):
  x, x_hat = photo_pairs()
  loss = perceptual.LPIPSLoss("alex", weights_path=weights)
  expected = perceptual.LPIPS("alex", weights_path=weights, check_range=False)(
      x, x_hat)
  values = loss(x, x_hat)
  assert values.shape == (2,)
  np.testing.assert_allclose(values, expected, rtol=1e-6)
  assert loss.components(x, x_hat).keys() == {"lpips"}


def test_dpc_is_weighted_lpips_plus_one_minus_msssim(weights):
  x, x_hat = photo_pairs()
  loss = perceptual.DPCLoss(alpha=0.3, trunk="alex", weights_path=weights)
  total, components = loss.terms(x, x_hat)
  assert set(components) == {"lpips", "msssim_loss"}
  lpips = perceptual.LPIPS("alex", weights_path=weights, check_range=False)(
      x, x_hat)
  one_minus_msssim = 1.0 - perceptual.msssim(x, x_hat)
  np.testing.assert_allclose(components["lpips"], lpips, rtol=1e-6)
  np.testing.assert_allclose(components["msssim_loss"], one_minus_msssim, rtol=1e-6)
  np.testing.assert_allclose(total, 0.3 * lpips + 0.7 * one_minus_msssim,
                             rtol=1e-6)
  np.testing.assert_allclose(loss(x, x_hat), total, rtol=1e-6)
  for name, value in loss.components(x, x_hat).items():
    np.testing.assert_allclose(value, components[name], rtol=1e-6)
  assert (components["lpips"].numpy() > 0).all()
  assert (components["msssim_loss"].numpy() > 0).all()


def test_gradients_reach_the_reconstruction(weights):
  x, x_hat = photo_pairs()
  x_hat = tf.constant(x_hat)
  loss = perceptual.DPCLoss(trunk="alex", weights_path=weights)
  with tf.GradientTape() as tape:
    tape.watch(x_hat)
    value = tf.reduce_sum(tf.function(loss)(x, x_hat))
  gradient = tape.gradient(value, x_hat).numpy()
  assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0


def test_gradients_are_finite_for_unrelated_images(weights):
  """Early in training a reconstruction looks nothing like its target; there
  MS-SSIM is 0 at some scale and its gradient must still be finite."""
  rng = np.random.default_rng(1)
  x = rng.random((2, 64, 64, 3)).astype(np.float32)
  x_hat = tf.constant(0.1 * rng.standard_normal((2, 64, 64, 3)), tf.float32)
  loss = perceptual.DPCLoss(trunk="alex", weights_path=weights)
  with tf.GradientTape() as tape:
    tape.watch(x_hat)
    value = tf.reduce_sum(loss(x, x_hat))
  assert np.isfinite(value.numpy())
  assert np.isfinite(tape.gradient(value, x_hat).numpy()).all()


def test_target_must_be_in_unit_range(weights):
  x, x_hat = photo_pairs()
  loss = perceptual.DPCLoss(trunk="alex", weights_path=weights)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"x must have.*\[0, 1\]"):
    loss(x * 255.0, x_hat)
  with pytest.raises(ValueError, match="rank 4"):
    loss(x[0], x_hat[0])


def test_alpha_must_be_a_weight(weights):
  with pytest.raises(ValueError, match=r"alpha.*\[0, 1\].*1.5"):
    perceptual.DPCLoss(alpha=1.5, weights_path=weights)


def test_missing_weights_is_an_error_at_construction(tmp_path):
  with pytest.raises(FileNotFoundError, match="dpc lpips-convert"):
    perceptual.DPCLoss(weights_path=tmp_path / "none.npz")


def test_get_config_round_trip(weights):
  x, x_hat = photo_pairs()
  for loss in (perceptual.DPCLoss(alpha=0.8, trunk="alex", weights_path=weights),
               perceptual.LPIPSLoss("alex", weights_path=weights)):
    config = loss.get_config()
    json.dumps(config)
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_allclose(clone(x, x_hat), loss(x, x_hat), rtol=1e-6)
