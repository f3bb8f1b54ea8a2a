"""Saving and loading models; serialisation of layers."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
from dpc_tf import layers


@pytest.mark.parametrize("arch", ["factorized", "channelwise"])
def test_saved_model_decodes_what_the_original_encoded(tiny_models, saved_models,
                                                       photo, arch):
  original = dpc_tf.Codec(tiny_models[arch])
  loaded = dpc_tf.load_codec(saved_models[arch])
  assert loaded.fingerprint == original.fingerprint
  data = original.encode(photo)
  assert loaded.encode(photo) == data
  np.testing.assert_array_equal(loaded.decode(data), original.decode(data))


# Saved, with its bitstream and decoded pixels, by dpc_tf at commit dcfd2b9,
# when `channelwise` was registered as "joint": the tiny channelwise model of
# conftest (seed 7, trained magnitudes, float16 weights) and the astronaut
# crop [96:128, 160:208].
OLD_JOINT_MODEL = os.path.join(os.path.dirname(__file__), "data", "joint_model")


def test_a_model_saved_as_joint_loads_keeps_its_name_and_decodes_its_files(caplog):
  from dpc_tf import container
  from dpc_tf.models import registry
  with caplog.at_level(logging.WARNING, logger="dpc_tf"):
    registry._warned.discard("joint")  # pylint: disable=protected-access
    codec = dpc_tf.load_codec(OLD_JOINT_MODEL)
  assert "'joint' is deprecated" in caplog.text and "'channelwise'" in caplog.text
  assert isinstance(codec.model, dpc_tf.ChannelwiseContextCodec)
  # The recorded name is hashed into the model's identity: it is kept, so
  # the fingerprint checks and the old bitstream is this model's.
  assert codec.model.architecture == "joint"
  with open(os.path.join(OLD_JOINT_MODEL, "astronaut.dpc"), "rb") as f:
    data = f.read()
  assert container.unpack(data).header.model_id == codec.model_id
  decoded = codec.decode(data)
  expected = dpc_tf.read_image(os.path.join(OLD_JOINT_MODEL, "astronaut.decoded.png"))
  # The same pixels on the machine kind that made the file; a little slack
  # for another CPU's rounding of the entropy model's indexes.
  assert np.abs(decoded.astype(int) - expected).mean() < 1.0
  import skimage.data
  new = codec.encode(skimage.data.astronaut()[96:128, 160:208])
  assert container.unpack(new).header.model_id == codec.model_id
  assert abs(len(new) - len(data)) <= 2


def test_saving_refuses_to_overwrite(saved_models, tiny_models):
  with pytest.raises(FileExistsError):
    dpc_tf.save_model(tiny_models["factorized"], saved_models["factorized"])


def test_saving_freezes_tables_and_drops_the_optimizer(tmp_path, photo):
  model = dpc_tf.create_model("factorized", num_filters=4)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), distortion="mse")
  model.fit(np.random.rand(2, 32, 32, 3).astype("float32"), epochs=1, verbose=0)
  dpc_tf.save_model(model, tmp_path / "m")
  names = [name for name, _ in tf.train.list_variables(str(tmp_path / "m" / "weights"))]
  assert not [n for n in names if "optimizer" in n]
  loaded = dpc_tf.load_model(tmp_path / "m")
  assert loaded.is_frozen
  assert dpc_tf.Codec(loaded).encode(photo) == dpc_tf.Codec(model).encode(photo)


def test_tampered_weights_or_description_are_detected(saved_models, tmp_path):
  import shutil
  path = tmp_path / "m"
  shutil.copytree(saved_models["factorized"], path)
  meta = json.loads((path / "model.json").read_text())
  meta["fingerprint"] = "0" * 16
  (path / "model.json").write_text(json.dumps(meta))
  with pytest.raises(dpc_tf.ModelFileError, match="fingerprint"):
    dpc_tf.load_model(path)
  meta["config"]["num_filters"] = 16
  (path / "model.json").write_text(json.dumps(meta))
  with pytest.raises(dpc_tf.ModelFileError, match="do not fit"):
    dpc_tf.load_model(path)


def test_not_a_model_directory(tmp_path):
  with pytest.raises(dpc_tf.ModelFileError, match="not a dpc_tf model"):
    dpc_tf.load_model(tmp_path)
  (tmp_path / "model.json").write_text("{not json")
  with pytest.raises(dpc_tf.ModelFileError, match="unreadable"):
    dpc_tf.load_model(tmp_path)
  (tmp_path / "model.json").write_text(json.dumps(
      {"format": "dpc_tf.model", "format_version": 99}))
  with pytest.raises(dpc_tf.ModelFileError, match="version 99"):
    dpc_tf.load_model(tmp_path)


LAYERS = [
    (layers.AnalysisTransform, dict(num_filters=6, latent_depth=5), (1, 32, 32, 3)),
    (layers.SynthesisTransform, dict(num_filters=6, channels=3), (1, 2, 2, 5)),
    (layers.HyperAnalysisTransform,
     dict(num_filters=6, hyperprior_depth=4, absolute_input=True), (1, 8, 8, 5)),
    (layers.HyperSynthesisTransform,
     dict(num_filters=6, output_depth=10, final_activation="relu"), (1, 2, 2, 4)),
    (layers.SliceTransform, dict(num_filters=6, output_depth=3), (1, 4, 4, 7)),
]


@pytest.mark.parametrize("cls, kwargs, shape", LAYERS)
def test_layers_serialise_and_reload_their_weights(cls, kwargs, shape, tmp_path):
  layer = cls(**kwargs)
  x = tf.random.normal(shape, seed=3)
  y = layer(x)
  config = layer.get_config()
  clone = tf.keras.layers.deserialize(
      tf.keras.layers.serialize(layer), custom_objects=None)
  assert clone.get_config() == config
  clone(x)
  # Through the TF checkpoint format (what save_model uses).
  tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
  tf.train.Checkpoint(layer=clone).read(str(tmp_path / "ckpt")).assert_consumed()
  np.testing.assert_allclose(clone(x).numpy(), y.numpy(), atol=1e-6)


def test_a_user_composes_a_codec_in_keras(tmp_path):
  """The README's example: layers compose into a plain functional model."""
  inputs = tf.keras.Input((None, None, 3))
  y = layers.AnalysisTransform(num_filters=8, latent_depth=4)(inputs)
  outputs = layers.SynthesisTransform(num_filters=8)(tf.round(y))
  model = tf.keras.Model(inputs, outputs)
  x = tf.random.uniform((1, 32, 48, 3))
  model.save(tmp_path / "m.h5")
  reloaded = tf.keras.models.load_model(tmp_path / "m.h5")
  np.testing.assert_allclose(reloaded(x).numpy(), model(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 5, 3, 8), (3, 3, 8, 4)])
def test_restore_target_kernels_match_tfc(shape):
  """Loading builds kernels without tfc's FFT; they must be tfc's, exactly."""
  import tensorflow_compression as tfc
  ours = layers.ZeroRDFTParameter(shape=shape)
  theirs = tfc.RDFTParameter(None, name="kernel", shape=shape, dtype=tf.float32)
  for a, b in ((ours.real, theirs.real), (ours.imag, theirs.imag)):
    assert a.shape == b.shape and a.name == b.name
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert ours().shape == shape
  copy = tf.keras.utils.deserialize_keras_object(
      tf.keras.utils.serialize_keras_object(ours))
  assert isinstance(copy, tfc.RDFTParameter) and copy.real.shape == ours.real.shape
