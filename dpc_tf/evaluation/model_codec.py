"""Our learned codecs in `dpc eval`: one named family, one setting per rate.

A family is a list of settings, as quality indexes are for JPEG: each is a
model path (a fixed-rate model trained at one λ), or `PATH@Q`, a
variable-rate model at quality Q. A variable-rate model given without `@Q`
is evaluated at each of its trained qualities (1, 2, ..., N). A path is
anything `dpc_tf.load_codec` opens (a model directory written by
`dpc_tf.save_model`, or an exported SavedModel), or `zoo:NAME` for a model
of the shipped zoo.
"""

import os

import numpy as np

from dpc_tf import files
from dpc_tf.evaluation.codecs import EvalCodec


class ModelCodec(EvalCodec):
  """A family of learned codecs, each setting a model path.

  Args:
    name: the family's name in tables and plots (e.g. "dpc-msssim").
    paths: the model paths, one per rate point.
    loader: opens a path and returns an object with `.encode(uint8 image) ->
      bytes` and `.decode(bytes) -> uint8 image`; defaults to
      `dpc_tf.load_codec`.
  """

  setting_name = "model"
  learned = True

  def __init__(self, name, paths, loader=None):
    settings = []
    for spec in paths:
      spec = str(spec)
      if "@" in spec or loader is not None:
        settings.append(self.parse_setting(spec))
        continue
      try:
        qualities = trained_qualities(spec)
      except files.ModelFileError:
        # Kept as one setting: its `prepare` fails with the same message and
        # the evaluation records it and goes on with the other codecs.
        qualities = None
      if qualities:
        settings += [f"{self.parse_setting(spec)}@{q:g}" for q in qualities]
      else:
        settings.append(self.parse_setting(spec))
    super().__init__(name, settings)
    self._loader = loader
    self._loaded_path = None
    self._codec = None

  def parse_setting(self, text):
    path, at, quality = str(text).partition("@")
    path = path if path.startswith("zoo:") else os.path.normpath(path)
    if at:
      try:
        return f"{path}@{float(quality):g}"
      except ValueError:
        raise ValueError(f"Bad model setting {text!r}: the quality after @ must "
                         "be a number.") from None
    return path

  @staticmethod
  def _split(setting):
    path, at, quality = setting.partition("@")
    return path, (float(quality) if at else None)

  def setting_key(self, setting):
    return str(setting)

  def prepare(self, setting):
    # One model in memory at a time: the evaluation codes every image at one
    # setting before moving to the next (qualities of one model share it).
    path, _ = self._split(setting)
    if self._loaded_path == path:
      return
    self._codec, self._loaded_path = None, None
    if self._loader is None:
      import dpc_tf
      self._codec = dpc_tf.load_codec(path)
    else:
      self._codec = self._loader(path)
    self._loaded_path = path

  def encode(self, image, setting):
    self.prepare(setting)
    _, quality = self._split(setting)
    extra = {} if quality is None else {"quality": quality}
    return bytes(self._codec.encode(np.ascontiguousarray(image), **extra))

  def decode(self, data, setting):
    self.prepare(setting)
    return np.asarray(self._codec.decode(data))

  def describe(self):
    return (f"learned codec family ({len(self.settings)} setting(s) via dpc_tf.load_codec), "
            "setting = model path[@quality]")


def trained_qualities(path):
  """[1, 2, ..., N] for a variable-rate model at `path`, else None.

  Reads the model's description only (no weights): any model path
  `dpc_tf.load_codec` takes. Raises `ModelFileError` naming a bad path.
  """
  from dpc_tf import loading  # pylint: disable=import-outside-toplevel
  lmbdas = loading.model_info(path)["config"].get("lmbdas")
  return [float(q) for q in range(1, len(lmbdas) + 1)] if lmbdas else None
