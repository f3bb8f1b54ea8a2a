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


def _table_ranges(em):
  """(lowest, highest) symbol of each of `em`'s coding tables.

  Symbols outside take the range coder's escape (overflow) path. tfc stores
  the tables back to back, each as a negative precision marker, then the CDF
  of its n symbols and the escape symbol (n + 2 values).
  """
  cdf, offset = em.cdf.numpy(), em.cdf_offset.numpy()
  starts = np.flatnonzero(cdf < 0)
  lengths = np.diff(np.append(starts, len(cdf))) - 3
  return offset, offset + lengths - 1


def _spy_on_range_coding(model, monkeypatch):
  """Records what each frozen entropy model codes and decodes, in call order.

  Returns (coded, decoded): lists of (name, symbols, lowest, highest), where
  lowest/highest bound the table each symbol is coded with.
  """
  coded, decoded = [], []

  def record(log, name, em, values, indexes, loc):
    symbols = np.round(values.numpy() - (0.0 if loc is None else loc.numpy()))
    low, high = _table_ranges(em)
    if indexes:  # Indexed model: tfc clips the index, then truncates it.
      table = np.clip(indexes[0].numpy(), 0, model.num_scales - 1).astype(int)
      low, high = low[table], high[table]
    log.append((name, symbols, low, high))

  for name, em in model._frozen.items():
    def compress(values, *indexes, loc=None, _name=name, _em=em,
                 _compress=em.compress):
      record(coded, _name, _em, tf.convert_to_tensor(values), indexes, loc)
      return _compress(values, *indexes, **({} if loc is None else {"loc": loc}))

    def decompress(strings, *args, loc=None, _name=name, _em=em,
                   _decompress=em.decompress):
      values = _decompress(strings, *args, **({} if loc is None else {"loc": loc}))
      indexes = args if _name == "indexed" else ()
      record(decoded, _name, _em, values, indexes, loc)
      return values

    monkeypatch.setattr(em, "compress", compress, raising=False)
    monkeypatch.setattr(em, "decompress", decompress, raising=False)
  return coded, decoded


@pytest.mark.parametrize("arch", ARCHS)
def test_every_symbol_round_trips_with_large_values_and_escapes(
    tiny_models, arch, monkeypatch):
  """The decoder recovers each coded symbol, at a trained model's magnitudes.

  The tiny models are seeded and scaled (conftest.give_trained_magnitudes):
  hyper-latents are mostly non-zero, so an encoder that computed the entropy
  parameters from the unquantised z (the decoder only has the quantised one)
  fails here, and symbols exceed the coding tables, so the range coder's
  escape path is exercised.
  """
  from skimage import data
  model = tiny_models[arch]
  image = np.ascontiguousarray(data.astronaut()[100:165, 150:280])
  coded, decoded = _spy_on_range_coding(model, monkeypatch)
  codec = dpc_tf.Codec(model)
  # Eagerly, so the spies see values (compression is otherwise a traced graph).
  tf.config.run_functions_eagerly(True)
  try:
    pixels = codec.decode(codec.encode(image))
  finally:
    tf.config.run_functions_eagerly(False)
  assert [c[0] for c in coded] == [d[0] for d in decoded]
  assert len(coded) == len(model.string_names)
  for (name, symbols, _, _), (_, got, _, _) in zip(coded, decoded):
    np.testing.assert_array_equal(got, symbols, err_msg=f"{arch}: {name}")
  latents = [c for c, n in zip(coded, model.string_names) if n != "z"]
  symbols = np.concatenate([c[1].ravel() for c in latents])
  escaped = np.concatenate([((c[1] < c[2]) | (c[1] > c[3])).ravel()
                            for c in latents])
  assert np.abs(symbols).max() >= 30, np.abs(symbols).max()
  assert escaped.mean() >= 0.05, f"only {escaped.sum()} symbols escape"
  if "z" in model.string_names:
    z = coded[0][1]
    assert np.mean(z != 0) > 0.5 and np.abs(z).max() >= 10, z
  # And the pixels are those the encoder's quantised latents give.
  np.testing.assert_array_equal(
      pixels, model.image_from_latents(model.image_latents(image),
                                       image.shape[:2]).numpy())
  assert pixels.std() > 20  # A reconstruction that depends on the latents.


@pytest.mark.parametrize("arch", ARCHS)
def test_encoding_is_deterministic(tiny_models, photo, arch):
  codec = dpc_tf.Codec(tiny_models[arch])
  assert codec.encode(photo) == codec.encode(photo.copy())


@pytest.mark.parametrize("arch", ["hyperprior", "channelwise"])
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
def test_compression_graphs_are_plain_ops_without_branches(tiny_models, arch):
  """Traced without AutoGraph (the first `dpc compress` traced for seconds):
  GDN's fast path is decided while tracing, not left to a run-time branch."""
  model = tiny_models[arch]
  for name, function in model.tf_functions().items():
    graph = function.get_concrete_function().graph
    # (tfc's decoders check their input with tf.debugging asserts, which
    # are guarded by an If: those are meant.)
    branches = [op.name for op in graph.get_operations()
                if op.type in ("If", "StatelessIf", "While", "StatelessWhile")
                and "AssertGuard" not in op.name]
    assert not branches, (name, branches)


def test_a_composed_model_with_tensor_branches_gets_a_clear_error(photo, monkeypatch):
  """A codec composed with tfc's own GDN (which branches on tensors) is told
  what to change, and traces with `autograph = True`."""
  import tensorflow_compression as tfc
  from dpc_tf import layers
  with monkeypatch.context() as patch:
    patch.setattr(layers, "GDN", tfc.GDN)  # transforms built with tfc.GDN
    model = dpc_tf.create_model("hyperprior", num_filters=8)
  assert type(model.analysis_transform._stack[0].activation) is tfc.GDN
  model.update()
  with pytest.raises(tf.errors.OperatorNotAllowedInGraphError,
                     match="dpc_tf.layers.GDN instead of tfc.GDN.*autograph = True"):
    model.tf_functions()["compress"](photo)
  model.autograph = True
  strings = model.tf_functions()["compress"](photo)
  assert strings["image_shape"].numpy().tolist() == list(photo.shape[:2])


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


def test_keras_batch_methods_and_xy_datasets_train():
  # Keras hands train_step/test_step an (x,) tuple from train_on_batch and
  # from datasets of (x, y) pairs; the models train on the images alone.
  model = dpc_tf.create_model("mean_scale_hyperprior",
                              **TINY_HPARAMS["mean_scale_hyperprior"])
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), distortion="mse",
                lmbda=0.01)
  x = _images(2, 64)
  before = [v.numpy() for v in model.trainable_variables]
  logs = model.train_on_batch(x, return_dict=True)
  assert set(logs) >= {"loss", "bpp", "psnr"} and np.isfinite(logs["loss"])
  assert any(not np.array_equal(b, v.numpy())
             for b, v in zip(before, model.trainable_variables))
  assert np.isfinite(model.test_on_batch(x, return_dict=True)["loss"])
  pairs = tf.data.Dataset.from_tensor_slices((x, x)).batch(2)
  assert np.isfinite(model.evaluate(pairs, verbose=0, return_dict=True)["loss"])


def test_evaluation_reports_the_distortion_and_the_loss_it_makes():
  model = dpc_tf.create_model("hyperprior", num_filters=8)
  model.compile(optimizer="adam", distortion="msssim", lmbda=10.0)
  logs = model.evaluate(_images(2, 64), batch_size=2, verbose=0, return_dict=True)
  # distortion is 1 - MS-SSIM; the loss is bpp + lmbda * distortion.
  assert 0 < logs["distortion"] <= 2
  np.testing.assert_allclose(logs["loss"], logs["bpp"] + 10.0 * logs["distortion"],
                             rtol=1e-4)
  with pytest.raises(ValueError, match="quantization_proxy"):
    model.compile(optimizer="adam", quantization_proxy="round")


def test_channelwise_rejects_slices_that_do_not_divide_latents():
  with pytest.raises(ValueError, match="num_slices"):
    dpc_tf.create_model("channelwise", latent_depth=10, num_slices=3)
