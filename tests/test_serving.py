"""Finding, describing and refusing SavedModels (fast; export is in test_export)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
from dpc_tf import cli, saving, serving


def fake_saved_model(path):
  os.makedirs(path, exist_ok=True)
  open(os.path.join(path, "saved_model.pb"), "wb").close()
  return str(path)


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory):
  """A SavedModel not made by dpc-export."""
  path = str(tmp_path_factory.mktemp("plain") / "1")
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.double = tf.function(lambda x: {"y": x * module.scale},
                              input_signature=[tf.TensorSpec([None], tf.float32,
                                                             name="x")])
  tf.saved_model.save(module, path, signatures={"double": module.double})
  return path


def test_resolve_picks_the_highest_integer_version(tmp_path):
  for version in ("1", "10", "9"):
    fake_saved_model(tmp_path / "m" / version)
  os.makedirs(tmp_path / "m" / "11")           # Being written: no saved_model.pb.
  fake_saved_model(tmp_path / "m" / "latest")  # Not an integer.
  assert serving.resolve(tmp_path / "m") == str(tmp_path / "m" / "10")
  assert serving.resolve(tmp_path / "m" / "9") == str(tmp_path / "m" / "9")
  assert serving.is_saved_model(tmp_path / "m")
  assert serving.next_version(str(tmp_path / "m")) == 11
  assert serving.next_version(str(tmp_path / "new")) == 1
  assert not serving.is_saved_model(tmp_path / "m" / "11")
  with pytest.raises(saving.ModelFileError, match="not a SavedModel"):
    serving.resolve(tmp_path / "m" / "11")


def test_a_plain_saved_model_is_described_but_not_a_codec(plain_saved_model):
  text = serving.describe(plain_saved_model)
  assert "not exported by dpc-export" in text
  assert "double(x: float32 [-1]) -> y: float32 [-1]" in text
  with pytest.raises(saving.ModelFileError, match="not one exported by dpc-export"):
    dpc_tf.load_codec(plain_saved_model)


def test_dpc_info_describes_saved_models(plain_saved_model, capsys):
  assert cli.main(["info", os.path.dirname(plain_saved_model)]) == 0
  out = capsys.readouterr().out
  assert "(version 1:" in out and "double(" in out


def test_info_files_of_other_versions_are_refused(tmp_path):
  path = fake_saved_model(tmp_path / "1")
  os.makedirs(os.path.join(path, serving.INFO_DIR))
  info_path = os.path.join(path, serving.INFO_DIR, serving.INFO_FILE)
  with open(info_path, "w") as f:
    json.dump({"format": serving.FORMAT, "format_version": 99}, f)
  with pytest.raises(saving.ModelFileError, match="format version 99"):
    serving.read_info(path)
  with open(info_path, "w") as f:
    f.write("{not json")
  with pytest.raises(saving.ModelFileError, match="unreadable"):
    serving.read_info(path)


def test_export_rejects_bad_names_and_versions(tmp_path):
  with pytest.raises(ValueError, match="plain name"):
    serving.export(None, str(tmp_path), "a/b")
  with pytest.raises(ValueError, match="integers >= 0"):
    serving.export(None, str(tmp_path), "m", version=-1)


def test_exported_and_eager_graphs_take_the_one_set_of_input_specs(tiny_models):
  model = tiny_models["hyperprior"]
  spec = model.input_specs()
  functions = model.tf_functions()  # What serving.export saves.
  assert functions["compress"].input_signature == (spec["image"],)
  assert functions["decompress"].input_signature == (spec["image_shape"],
                                                     *spec["strings"])
  assert functions["latents"].input_signature == (spec["image"],)
  assert functions["from_latents"].input_signature == (spec["latents"],
                                                       spec["image_shape"])
  # The graphs eager calls run.
  traced = model._traced  # pylint: disable=protected-access
  assert traced("analyze").input_signature == (spec["image"],)
  assert traced("compress_analyzed").input_signature == (spec["analyzed"],
                                                         spec["image_shape"])
  assert [s.name for s in spec["strings"]] == list(model.string_names)


@pytest.mark.parametrize("architecture", ["factorized", "hyperprior", "mean_scale_hyperprior",
                                          "channelwise"])
def test_in_process_graphs_compute_kernels_once_with_the_exported_bits(tiny_models, photo,
                                                                       architecture):
  """Eager callers (dpc_tf.Codec) run graphs that read the transforms' kernels
  computed once (layers.InferenceKernels) rather than an inverse FFT
  of every filter per call, as the exported functions do: the same bytes and
  pixels, and no IRFFT left in the in-process graphs."""
  model = tiny_models[architecture]
  exported = model.tf_functions()
  image = tf.constant(photo)
  outputs = model.compress_image(photo)
  reference = exported["compress"](image)
  assert set(outputs) == set(reference)
  for name in outputs:
    assert np.array_equal(outputs[name].numpy(), reference[name].numpy()), name
  strings = [outputs[name] for name in model.string_names]
  decoded = model.decompress_image(outputs["image_shape"], *strings)
  assert np.array_equal(decoded.numpy(),
                        exported["decompress"](outputs["image_shape"], *strings)["image"])

  def op_types(function, *args):
    graph = function.get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}

  assert "IRFFT2D" in op_types(exported["compress"], image)
  assert "IRFFT2D" in op_types(exported["decompress"], outputs["image_shape"], *strings)
  traced = model._traced  # pylint: disable=protected-access
  assert "IRFFT2D" not in op_types(traced("compress"), image)
  assert "IRFFT2D" not in op_types(traced("decompress"), outputs["image_shape"], *strings)
