"""Variable-rate models: gains, qualities in the bitstream, rate control, λ per image."""

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
from dpc_tf import container, layers, training

LMBDAS = (0.002, 0.01, 0.05)


@pytest.fixture(scope="module")
def model():
  tf.keras.utils.set_random_seed(3)
  model = dpc_tf.create_model("mean_scale_hyperprior", num_filters=8,
                              lmbdas=LMBDAS)
  model.update()
  return model


@pytest.fixture(scope="module")
def image():
  from skimage import data
  return np.ascontiguousarray(data.astronaut()[64:256, 96:288])


def test_gains_interpolate_geometrically_and_serialise():
  gains = layers.ChannelGains(3, initial_log_gains=[-1.0, 0.0, 2.0])
  x = tf.ones([1, 2, 2, 4])
  gains(x, 0.0)
  np.testing.assert_allclose(gains(x, 0.0)[0, 0, 0], np.exp(-1.0), rtol=1e-6)
  np.testing.assert_allclose(gains(x, 2.0)[0, 0, 0], np.exp(2.0), rtol=1e-6)
  # Halfway between levels 1 and 2: the geometric mean of their gains.
  np.testing.assert_allclose(gains(x, 1.5)[0, 0, 0], np.exp(1.0), rtol=1e-6)
  # One level per image in a batch.
  per_image = gains(tf.ones([2, 1, 1, 4]), tf.constant([0.0, 2.0]))
  np.testing.assert_allclose(per_image[:, 0, 0, 0], np.exp([-1.0, 2.0]), rtol=1e-6)
  clone = layers.ChannelGains.from_config(gains.get_config())
  clone(x, 0.0)
  clone.set_weights(gains.get_weights())
  np.testing.assert_array_equal(clone(x, 1.3), gains(x, 1.3))


def test_bad_lmbdas_are_refused():
  for bad in ([0.01], [0.01, 0.005], [0.0, 0.01], [0.01, 0.01]):
    with pytest.raises(ValueError, match="increasing order"):
      dpc_tf.create_model("hyperprior", num_filters=8, lmbdas=bad)


def test_rate_rises_with_quality_and_bitstream_records_it(model, image):
  codec = dpc_tf.Codec(model)
  assert codec.quality_range == (1.0, 3.0)
  sizes = []
  for quality in (1.0, 1.7, 2.0, 3.0):
    data = codec.encode(image, quality=quality)
    assert container.unpack(data).header.quality == pytest.approx(quality)
    decoded = codec.decode(data)
    assert decoded.shape == image.shape
    sizes.append(len(data))
  assert sizes == sorted(sizes) and sizes[-1] > 1.5 * sizes[0], sizes
  # The decoder takes the quality from the header: the same pixels as the
  # model's own decode at that quality.
  data = codec.encode(image, quality=2.25)
  outputs = model.compress_image(image, 2.25)
  expected = model.decompress_image(
      outputs["image_shape"], *[outputs[n] for n in model.string_names],
      quality=2.25)
  np.testing.assert_array_equal(codec.decode(data), expected.numpy())
  # Tiled (what large images get): the quality reaches the inverse gains too.
  np.testing.assert_array_equal(codec.decode(data, tile=48), expected.numpy())


def test_qualities_outside_the_range_are_clear_errors(model, image):
  codec = dpc_tf.Codec(model)
  for bad in (0.5, 3.01, float("nan")):
    with pytest.raises(dpc_tf.QualityError, match=r"\[1, 3\]"):
      codec.encode(image, quality=bad)
  with pytest.raises(dpc_tf.QualityError, match=r"needs a quality in \[1, 3\]"):
    codec.encode(image)
  with pytest.raises(dpc_tf.QualityError, match="outside"):
    model.compress_image(image, 4.0)


def test_fixed_rate_models_refuse_a_quality(tiny_models, photo):
  codec = dpc_tf.Codec(tiny_models["hyperprior"])
  with pytest.raises(dpc_tf.QualityError, match="fixed-rate"):
    codec.encode(photo, quality=2.0)
  with pytest.raises(dpc_tf.QualityError, match="fixed-rate"):
    codec.encode_at_bpp(photo, 0.5)


def test_rate_control_hits_the_target_or_says_what_it_got(model, image):
  codec = dpc_tf.Codec(model)
  low = codec.encode_at_bpp(image, 1e-4)
  high = codec.encode_at_bpp(image, 1e3)
  assert not low.reachable and low.quality == 1.0
  assert not high.reachable and high.quality == 3.0
  assert "below its range" in low.describe()
  target = float(np.sqrt(low.bpp * high.bpp))
  result = codec.encode_at_bpp(image, target)
  assert result.reachable, result.describe()
  assert abs(result.bpp - target) <= 0.03 * target
  assert 1.0 < result.quality < 3.0
  assert 8 * len(result.data) / (image.shape[0] * image.shape[1]) == result.bpp
  np.testing.assert_array_equal(
      codec.decode(result.data),
      codec.decode(codec.encode(image, quality=result.quality)))
  assert codec.encode(image, bpp=target) == result.data
  with pytest.raises(dpc_tf.QualityError, match="outside what this model reaches"):
    codec.encode(image, bpp=1e-4)


def test_training_draws_a_lambda_per_image_and_validation_cycles_them(model):
  model.compile(optimizer="adam", distortion="mse")
  x = tf.zeros([7, 16, 16, 3])
  qualities, lmbdas = model._batch_qualities(x, training=False)
  np.testing.assert_array_equal(qualities, [1, 2, 3, 1, 2, 3, 1])
  np.testing.assert_allclose(lmbdas, [0.002, 0.01, 0.05, 0.002, 0.01, 0.05, 0.002])
  qualities, lmbdas = model._batch_qualities(tf.zeros([256, 16, 16, 3]), True)
  assert set(np.asarray(qualities).tolist()) == {1.0, 2.0, 3.0}
  np.testing.assert_allclose(
      lmbdas, np.array(LMBDAS)[np.asarray(qualities, int) - 1], rtol=1e-6)
  with pytest.raises(ValueError, match="do not pass lmbda"):
    model.compile(optimizer="adam", distortion="mse", lmbda=0.01)


def test_each_image_is_weighed_by_its_own_lambda(model, image):
  model.compile(optimizer="adam", distortion="mse")
  x = tf.constant(np.stack([image[:64, :64], image[64:128, :64],
                            image[:64, 64:128]]), tf.float32) / 255.0
  qualities, lmbdas = model._batch_qualities(x, training=False)
  x_hat, bits = model(x, quality=qualities)
  terms = model._terms(x, x_hat, bits, lmbdas)
  mse = tf.reduce_mean(tf.square(x - x_hat), axis=(1, 2, 3))
  np.testing.assert_allclose(
      terms["loss"], terms["bpp"] + np.array(LMBDAS) * 255.0**2 * mse, rtol=1e-5)


def test_training_moves_the_levels_apart():
  """After training, the high-λ level spends more bits for less distortion."""
  from skimage import data
  tf.keras.utils.set_random_seed(5)
  photo = data.astronaut()
  rng = np.random.default_rng(0)
  crops = np.stack([photo[i:i + 64, j:j + 64] for i, j in
                    rng.integers(0, 448, (16, 2))]).astype(np.float32) / 255
  model = dpc_tf.create_model("factorized", num_filters=16, lmbdas=(0.0005, 0.05))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), distortion="mse")
  model.fit(crops, batch_size=8, epochs=30, verbose=0)
  x = tf.constant(crops)
  (x_low, bits_low), (x_high, bits_high) = (model(x, quality=q) for q in (1.0, 2.0))
  assert float(tf.reduce_mean(bits_high)) > 1.03 * float(tf.reduce_mean(bits_low))
  assert (float(tf.reduce_mean(tf.square(x - x_high))) <
          0.8 * float(tf.reduce_mean(tf.square(x - x_low))))


def test_a_variable_rate_model_starts_from_a_fixed_rate_one(tmp_path, saved_models):
  model = dpc_tf.create_model("hyperprior", num_filters=8, lmbdas=LMBDAS)
  copied, left = training.init_weights(model, saved_models["hyperprior"])
  source = dpc_tf.load_model(saved_models["hyperprior"])
  assert len(copied) == len(source.trainable_variables)
  assert sorted(left) == sorted(v.name for v in model.trainable_variables
                                if "gains" in v.name)
  by_name = {v.name: v for v in source.trainable_variables}
  for v in model.trainable_variables:
    if v.name in by_name:
      np.testing.assert_array_equal(v.numpy(), by_name[v.name].numpy())
  other = dpc_tf.create_model("hyperprior", num_filters=16, lmbdas=LMBDAS)
  with pytest.raises(training.TrainingError, match="same --num_filters"):
    training.init_weights(other, saved_models["hyperprior"])


def test_saved_and_exported_variable_rate_models_decode_each_other(
    model, image, tmp_path):
  from dpc_tf import serving
  dpc_tf.save_model(model, tmp_path / "model")
  loaded = dpc_tf.load_codec(tmp_path / "model")
  assert loaded.model.lmbdas == LMBDAS
  data = loaded.encode(image, quality=1.5)
  assert data == dpc_tf.Codec(model).encode(image, quality=1.5)
  serving.export(model, str(tmp_path / "serving"), "vr", core=False)
  served = dpc_tf.load_codec(str(tmp_path / "serving" / "vr"))
  assert served.quality_range == (1.0, 3.0)
  assert served.encode(image, quality=1.5) == data
  np.testing.assert_array_equal(served.decode(data), loaded.decode(data))
  with pytest.raises(dpc_tf.QualityError, match=r"\[1, 3\]"):
    served.encode(image, quality=7.0)


@pytest.mark.parametrize("arch", ["hyperprior", "mean_scale_hyperprior", "channelwise"])
def test_decoder_undoes_the_gains_at_every_quality(arch):
  """Each quality decodes to the synthesis of the unquantised latents.

  At a trained model's magnitudes (conftest.give_trained_magnitudes) the
  rounding after the gains changes the latents by a few percent at most, so
  a decoder that applies the inverse gains rebuilds nearly the image the
  synthesis makes from the unquantised latents, whatever the quality; one that
  skipped or misapplied them would synthesise latents scaled by the gain
  (here 0.32x to 3.2x), far from it.
  """
  from conftest import TINY_HPARAMS, give_trained_magnitudes
  tf.keras.utils.set_random_seed(5)
  hparams = dict(TINY_HPARAMS[arch], lmbdas=(0.001, 0.01, 0.1))
  model = dpc_tf.create_model(arch, **hparams)
  give_trained_magnitudes(model).update()
  from skimage import data
  image = np.ascontiguousarray(data.astronaut()[100:228, 150:278])
  y = model.analyze_image(image)
  unquantised = model._to_image(  # pylint: disable=protected-access
      model.synthesis_transform(y), image.shape[:2]).numpy().astype(float)
  assert unquantised.std() > 20  # The reconstruction depends on the latents.
  codec = dpc_tf.Codec(model)
  for quality in (1.0, 2.0, 2.5, 3.0):
    decoded = codec.decode(codec.encode(image, quality=quality)).astype(float)
    error = np.abs(decoded - unquantised).mean()
    assert error < 0.1 * unquantised.std(), (quality, error)
