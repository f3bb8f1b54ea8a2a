"""Saving and loading trained codecs: `model.json` plus a TF checkpoint.

    directory/
      model.json          architecture, hyper-parameters, frozen-table shapes,
                          weights fingerprint, format version, weights storage
      weights.index       TF checkpoint of the weights and coding tables
      weights.data-*
    or, saved with weights_dtype="float16" (the shipped zoo, half the size):
      weights.npz         every codec variable in `codec_variables()` order,
                          float weights as float16, coding tables as int32

Why not Keras' own formats: with tfc 2.14, `.keras` files and
`save_weights("*.weights.h5")` silently drop tfc's variables (the reloaded
model decodes garbage, with no error). The TF-checkpoint format keeps them,
and storing the frozen tables avoids recomputing them (seconds) at load time.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from dpc_tf import files
from dpc_tf import layers
from dpc_tf.files import MODEL_FILE, ModelFileError  # pylint: disable=unused-import
from dpc_tf.models import registry

WEIGHTS_PREFIX = "weights"
NPZ_FILE = "weights.npz"
WEIGHTS_DTYPES = ("float32", "float16")
FORMAT = "dpc_tf.model"
FORMAT_VERSION = 1


def config_hash(architecture, config):
  """First 8 hex digits of the SHA-256 of the JSON [architecture, config]."""
  canonical = json.dumps([architecture, config], sort_keys=True,
                         separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def fingerprint(model):
  """SHA-256 (first 16 hex digits) of the hyper-parameters and every weight.

  Covers the frozen coding tables too: two models that decode the same bits
  to different pixels never share a fingerprint.
  """
  h = hashlib.sha256(config_hash(model.architecture, model.get_config()).encode())
  for variable in model.codec_variables():
    value = np.ascontiguousarray(variable.numpy())
    h.update(f"{value.dtype.str}{value.shape}".encode())
    h.update(value.tobytes())
  return h.hexdigest()[:16]


def _deployment_copy(model):
  """A fresh model with the same weights and tables but no optimizer state."""
  with layers.weights_to_be_restored():
    copy = registry.create_model(model.architecture, **model.get_config())
  copy.restore_frozen(model.frozen_config())
  targets, sources = copy.codec_variables(), model.codec_variables()
  if len(targets) != len(sources):
    raise RuntimeError("Model copy has a different set of variables; "
                       "this is a bug in the architecture's definition.")
  for target, source in zip(targets, sources):
    if target.shape != source.shape:
      raise RuntimeError(f"Variable shapes differ in model copy: {target.name} "
                         f"{target.shape} vs {source.name} {source.shape}.")
    target.assign(source)
  return copy


def round_to_float16(model):
  """A deployment copy of `model` whose weights are rounded to float16.

  The coding tables are rebuilt from the rounded priors, so the copy is a
  consistent codec of its own (with its own fingerprint): measure it, not
  the float32 model, for what ships as float16.
  """
  if not model.is_frozen:
    model.update()
  copy = _deployment_copy(model)
  for v in copy.trainable_variables:
    v.assign(tf.cast(tf.cast(v, tf.float16), v.dtype))
  copy.update()
  return copy


def save_model(model, directory, overwrite=False, weights_dtype="float32"):
  """Saves a trained model for `load_model`, `dpc` and export.

  Freezes the coding tables first if `update()` was never called. Writes to a
  temporary directory and renames it, so a crash never leaves half a model.
  `weights_dtype="float16"` stores `round_to_float16(model)` in half the
  space (the zoo's format). Returns the saved model's fingerprint.
  """
  directory = os.path.expanduser(os.fspath(directory))
  if weights_dtype not in WEIGHTS_DTYPES:
    raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got "
                     f"{weights_dtype!r}.")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise FileExistsError(f"{directory} is a file; a model is saved as a directory.")
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
  if not model.is_frozen:
    model.update()
  if weights_dtype == "float16":
    copy = round_to_float16(model)
  else:
    copy = _deployment_copy(model)
  tmp = files.staging_directory(directory, prefix=".tmp-model-")
  try:
    if weights_dtype == "float16":
      arrays = {}
      for i, v in enumerate(copy.codec_variables()):
        value = v.numpy()
        arrays[f"v{i:04d}"] = (value.astype(np.float16)
                               if value.dtype == np.float32 else value)
      np.savez_compressed(os.path.join(tmp, NPZ_FILE), **arrays)
    else:
      tf.train.Checkpoint(model=copy).write(os.path.join(tmp, WEIGHTS_PREFIX))
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION,
                architecture=model.architecture, config=model.get_config(),
                frozen=copy.frozen_config(), fingerprint=fingerprint(copy),
                weights_dtype=weights_dtype)
    with open(os.path.join(tmp, MODEL_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    files.publish_directory(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta["fingerprint"]


def read_model_info(directory):
  """Reads and checks `model.json` without building the model (no weights).

  `directory` is a model directory or a dpc-train run (`files.resolve_model`).
  """
  _, directory = files.resolve_model(directory, saved_model=False)
  path = os.path.join(directory, MODEL_FILE)
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelFileError(f"{path} is unreadable: {e}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ModelFileError(f"{path} is not a dpc_tf model description.")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ModelFileError(
        f"{path} has model format version {meta.get('format_version')}; this "
        f"dpc_tf reads version {FORMAT_VERSION}. Upgrade dpc_tf or re-save it.")
  for key in ("architecture", "config", "frozen", "fingerprint"):
    if key not in meta:
      raise ModelFileError(f"{path} lacks {key!r}.")
  return meta


def load_model(directory):
  """Loads a model saved by `save_model`, ready to compress (tables frozen).

  `directory` is a model directory or a dpc-train run (its `model/`).
  """
  _, directory = files.resolve_model(directory, saved_model=False)
  meta = read_model_info(directory)
  with layers.weights_to_be_restored():
    model = registry.create_model(meta["architecture"], **meta["config"])
  model.restore_frozen(meta["frozen"])
  if meta.get("weights_dtype", "float32") == "float16":
    _read_npz(model, directory, meta)
  else:
    _read_checkpoint(model, directory, meta)
  actual = fingerprint(model)
  if actual != meta["fingerprint"]:
    raise ModelFileError(
        f"Weights in {directory} have fingerprint {actual}, but model.json says "
        f"{meta['fingerprint']}: the files are corrupt or from different models.")
  return model


def _read_npz(model, directory, meta):
  path = os.path.join(directory, NPZ_FILE)
  try:
    with np.load(path, allow_pickle=False) as arrays:
      values = [arrays[f"v{i:04d}"] for i in range(len(arrays.files))]
  except (OSError, ValueError, KeyError) as e:
    raise ModelFileError(f"{path} is missing or unreadable: {e}") from None
  variables = model.codec_variables()
  if len(values) != len(variables):
    raise ModelFileError(f"{path} holds {len(values)} arrays; a "
                         f"{meta['architecture']} model with config "
                         f"{meta['config']} has {len(variables)} variables.")
  for v, value in zip(variables, values):
    # Coding tables have a dynamic length: (None,) fits any table.
    if not v.shape.is_compatible_with(value.shape):
      raise ModelFileError(f"{path}: {v.name} has shape {value.shape}, the model "
                           f"expects {v.shape}.")
    v.assign(value.astype(v.dtype.as_numpy_dtype))


def _read_checkpoint(model, directory, meta):
  prefix = os.path.join(directory, WEIGHTS_PREFIX)
  if not tf.io.gfile.exists(prefix + ".index"):
    raise ModelFileError(f"{directory} has no weights ({WEIGHTS_PREFIX}.index).")
  try:
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ModelFileError(
        f"Weights in {directory} do not fit a {meta['architecture']} model with "
        f"config {meta['config']}: {str(e).splitlines()[0]}") from None
