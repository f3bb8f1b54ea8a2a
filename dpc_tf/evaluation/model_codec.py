"""Our learned codecs in `dpc eval`: one named family, one model per setting.

A family is a list of trained models of the same kind at different
rate-distortion trade-offs (one per λ); each model path is one setting, as a
quality index is for JPEG. A path is anything `dpc_tf.load_codec` opens (a
model directory written by `dpc_tf.save_model`, or an exported SavedModel).
"""

import os

import numpy as np

from dpc_tf.evaluation.codecs import Codec


class ModelCodec(Codec):
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
    super().__init__(name, [os.path.normpath(str(path)) for path in paths])
    self._loader = loader
    self._loaded_path = None
    self._codec = None

  def parse_setting(self, text):
    return os.path.normpath(text)

  def setting_key(self, setting):
    return str(setting)

  def prepare(self, setting):
    # One model in memory at a time: the evaluation codes every image at one
    # setting before moving to the next.
    if self._loaded_path == setting:
      return
    self._codec, self._loaded_path = None, None
    if self._loader is None:
      import dpc_tf
      self._codec = dpc_tf.load_codec(setting)
    else:
      self._codec = self._loader(setting)
    self._loaded_path = setting

  def encode(self, image, setting):
    self.prepare(setting)
    return bytes(self._codec.encode(np.ascontiguousarray(image)))

  def decode(self, data, setting):
    self.prepare(setting)
    return np.asarray(self._codec.decode(data))

  def describe(self):
    return (f"learned codec family ({len(self.settings)} model(s) via dpc_tf.load_codec), "
            "setting = model path")
