"""Opening a model path, whatever it holds: `load_codec` (`dpc_tf.load_codec`).

The one place that dispatches on what `files.resolve_model` says a path is:
a model directory (or a dpc-train run, or `zoo:NAME`) opens as `codec.Codec`,
an exported SavedModel as `serving.SavedModelCodec`. It lives in neither
module: `serving` builds on `codec`, so `codec` must not import `serving`.
"""

import os

from dpc_tf import codec as codec_lib
from dpc_tf import files
from dpc_tf import saving
from dpc_tf import serving


def load_codec(path, isolate=False):
  """A `Codec` for a model path: a model directory saved by `dpc_tf.save_model`,
  a dpc-train run directory (its `model/`), `zoo:NAME`, or a SavedModel
  exported by `dpc-export` (`<base>/<name>/<version>`, or `<base>/<name>` for
  its highest version). See `dpc_tf.files.resolve_model`.

  `isolate=True`: `decode` runs in a worker process with a time budget
  (`dpc_tf.isolation.DecoderProcess`), for bitstreams from untrusted sources.
  """
  kind, resolved = files.resolve_model(path)
  if kind == "saved_model":
    codec = serving.SavedModelCodec.load(resolved)
  else:
    codec = codec_lib.Codec.load(resolved)
  codec.model_path = os.fspath(path)
  codec.isolate = isolate
  return codec


def model_info(path):
  """The description of the model at any model path, without its weights:
  `model.json` of a model directory, `dpc_model.json` of a SavedModel (both
  have "architecture", "config" and "fingerprint"). Raises `ModelFileError`.
  """
  kind, resolved = files.resolve_model(path)
  if kind == "saved_model":
    return serving.read_info(resolved)
  return saving.read_model_info(resolved)
