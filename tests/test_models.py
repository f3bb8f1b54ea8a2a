"""Every registered architecture: round trips, determinism, training, config."""

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
from conftest import TINY_HPARAMS

ARCHS = sorted(TINY_HPARAMS)


def test_registry_lists_every_architecture():
  assert dpc_tf.available_models() == ARCHS


def test_unknown_architecture_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown architecture 'nope'.*factorized"):
    dpc_tf.create_model("nope")
  with pytest.raises(ValueError, match="Bad hyper-parameters"):
    dpc_tf.create_model("hyperprior", filters=3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (65, 130)])
def test_round_trip_any_size(tiny_models, arch, shape):
  codec = dpc_tf.Codec(tiny_models[arch])
  rng = np.random.default_rng(sum(shape))
  image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
  data = codec.encode(image)
  decoded = codec.decode(data)
  assert decoded.shape == image.shape and decoded.dtype == np.uint8
  # Decoding reproduces exactly the reconstruction the model computes from
  # its quantised latents (the encoder's view), bit for bit.
  model = tiny_models[arch]
  expected = model.image_from_latents(model.image_latents(image), shape).numpy()
  np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_encoding_is_deterministic(tiny_models, photo, arch):
  codec = dpc_tf.Codec(tiny_models[arch])
  assert codec.encode(photo) == codec.encode(photo.copy())


@pytest.mark.parametrize("arch", ["hyperprior", "joint"])
def test_graph_functions_match_eager_methods(tiny_models, photo, arch):
  """Exported graphs and the eager codec must be interchangeable, bit for bit."""
  model = tiny_models[arch]
  fns = model.tf_functions()
  eager = model.compress_image(photo)
  graph = fns["compress"](photo)
  for name in model.string_names:
    assert eager[name].numpy() == graph[name].numpy()
  strings = [graph[name] for name in model.string_names]
  np.testing.assert_array_equal(
      model.decompress_image(graph["image_shape"], *strings).numpy(),
      fns["decompress"](graph["image_shape"], *strings)["image"].numpy())


@pytest.mark.parametrize("arch", ARCHS)
def test_models_are_fully_built_without_a_forward_pass(arch):
  model = dpc_tf.create_model(arch, **TINY_HPARAMS[arch])
  before = [v.shape for v in model.variables]
  model(tf.zeros((1, 64, 64, 3)))
  assert [v.shape for v in model.variables] == before


def test_compress_before_update_is_a_clear_error():
  model = dpc_tf.create_model("factorized", num_filters=4)
  with pytest.raises(RuntimeError, match="update"):
    model.compress_image(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("arch", ARCHS)
def test_get_config_round_trip(tiny_models, arch):
  model = tiny_models[arch]
  clone = type(model).from_config(model.get_config())
  assert clone.get_config() == model.get_config()
  clone.set_weights(model.get_weights()[:len(clone.get_weights())])
  x = tf.random.uniform((1, 64, 64, 3), seed=1)
  np.testing.assert_allclose(clone(x)[0].numpy(), model(x)[0].numpy(), atol=1e-6)


def _images(n, size, seed=0):
  from skimage import data
  photo = data.astronaut().astype(np.float32) / 255.0
  rng = np.random.default_rng(seed)
  crops = []
  for _ in range(n):
    i, j = rng.integers(0, 512 - size, 2)
    crops.append(photo[i:i + size, j:j + size])
  return np.stack(crops)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_lowers_the_loss(arch):
  model = dpc_tf.create_model(arch, **TINY_HPARAMS[arch])
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), distortion="mse",
                lmbda=0.01)
  x = _images(8, 64)
  before = model.evaluate(x, batch_size=4, verbose=0, return_dict=True)
  model.fit(x, batch_size=4, epochs=12, verbose=0)
  after = model.evaluate(x, batch_size=4, verbose=0, return_dict=True)
  assert after["loss"] < 0.7 * before["loss"], (before, after)
  assert model.is_frozen  # fit() froze the tables.
  assert set(after) >= {"loss", "bpp", "distortion", "mse", "psnr"}


def test_training_reports_distortion_and_quantization_proxy():
  model = dpc_tf.create_model("hyperprior", num_filters=8)
  model.compile(optimizer="adam", distortion="msssim", lmbda=10.0,
                quantization_proxy="noise")
  logs = model.evaluate(_images(2, 64), batch_size=2, verbose=0, return_dict=True)
  # distortion is 1 - MS-SSIM; the loss is bpp + lmbda * distortion.
  assert 0 < logs["distortion"] <= 2
  np.testing.assert_allclose(logs["loss"], logs["bpp"] + 10.0 * logs["distortion"],
                             rtol=1e-4)
  with pytest.raises(ValueError, match="quantization_proxy"):
    model.compile(optimizer="adam", quantization_proxy="round")


def test_joint_rejects_slices_that_do_not_divide_latents():
  with pytest.raises(ValueError, match="num_slices"):
    dpc_tf.create_model("joint", latent_depth=10, num_slices=3)
