"""SavedModels of trained codecs for TF Serving, and a `Codec` that runs them.

`export(model, base_dir, name)` writes two SavedModels in TF Serving's layout
(`<base>/<model name>/<integer version>/`):

    <base>/<name>/<version>/        "full": signatures
                                      compress      image [, quality] -> strings, image_shape
                                      decompress    image_shape, strings [, quality] -> image
                                      latents       image [, quality] -> latents
                                      from_latents  latents, image_shape [, quality] -> image
    <base>/<name>_core/<version>/   "core": latents and from_latents only

Why two: the range coder is made of tensorflow-compression's custom ops, and
a SavedModel that contains any of them cannot be loaded at all (not even its
other signatures) by a TensorFlow without tfc's op library, such as stock TF
Serving. The core model holds only the transforms' variables and core
TensorFlow ops, so stock TF Serving serves it; entropy coding of its latents
is then the client's job. Serving the full model needs TF Serving built with
tfc's ops (see docs/train_export.md).

Inputs and outputs: `image` is uint8 [H, W, 3]; `image_shape` int32 [2] (the
height and width); each string (named as `model.string_names`, e.g. `z`, `y`)
a scalar tf.string; `latents` float32 [1, h, w, channels]: the quantised
latents (what is entropy-coded). Variable-rate models take a float32 scalar
`quality` too (in `quality_range` of their `dpc_model.json`).

Each SavedModel carries `assets.extra/dpc_model.json`: architecture,
hyper-parameters, weights fingerprint and signatures. It identifies the model
in `.dpc` bitstreams, so `SavedModelCodec` and `dpc_tf.Codec` read each
other's files bit for bit, and `describe` (`dpc info`) reads it without
loading TensorFlow.

TensorFlow is imported inside functions: `dpc info` and `dpc` start-up stay fast.
"""

import json
import os
import shutil
import tempfile

from dpc_tf import codec as codec_lib
from dpc_tf import container
from dpc_tf import files
from dpc_tf import saving

INFO_DIR = "assets.extra"      # Extra files TF Serving ignores (and copies along).
INFO_FILE = "dpc_model.json"
FORMAT = "dpc_tf.saved_model"
FORMAT_VERSION = 1
CORE_SUFFIX = "_core"
FULL_SIGNATURES = ("compress", "decompress", "latents", "from_latents")
CORE_SIGNATURES = ("latents", "from_latents")


# -- Export ------------------------------------------------------------------


def _read_saved_model_proto(directory):
  from tensorflow.core.protobuf import saved_model_pb2
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def _signatures(proto):
  """{name: {"inputs": {key: "dtype [shape]"}, "outputs": {...}}} of a SavedModel."""
  from tensorflow.python.framework import dtypes

  def describe(tensor):
    dims = [d.size for d in tensor.tensor_shape.dim]
    shape = "unknown rank" if tensor.tensor_shape.unknown_rank else str(dims)
    return f"{dtypes.as_dtype(tensor.dtype).name} {shape}"

  result = {}
  for name, signature in proto.meta_graphs[0].signature_def.items():
    if name.startswith("__"):
      continue
    result[name] = dict(
        inputs={k: describe(v) for k, v in sorted(signature.inputs.items())},
        outputs={k: describe(v) for k, v in sorted(signature.outputs.items())})
  return result


def _custom_ops(proto):
  """Op types in a SavedModel that core TensorFlow does not define (tfc's)."""
  import tensorflow as tf
  graph = proto.meta_graphs[0].graph_def
  ops = {node.op for node in graph.node}
  for function in graph.library.function:
    ops.update(node.op for node in function.node_def)
  return sorted(op for op in ops if not hasattr(tf.raw_ops, op))


def _save(module, signatures, directory, info):
  """Saves a SavedModel with its info file; returns the info written."""
  import tensorflow as tf
  tf.saved_model.save(module, directory, signatures=signatures)
  proto = _read_saved_model_proto(directory)
  info = dict(info, signatures=_signatures(proto), custom_ops=_custom_ops(proto))
  os.makedirs(os.path.join(directory, INFO_DIR), exist_ok=True)
  with open(os.path.join(directory, INFO_DIR, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  return info


def _module(variables):
  import tensorflow as tf
  module = tf.Module()
  # Only these variables are saved: a function that uses any other fails to
  # export ("untracked resource"), which keeps tfc's tables out of the core.
  module.exported_variables = list(variables)
  return module


def _unique(variables):
  seen, result = set(), []
  for v in variables:
    if id(v) not in seen:
      seen.add(id(v))
      result.append(v)
  return result


def export_saved_models(model, full_dir, core_dir=None):
  """Writes the full SavedModel to `full_dir` and the core one to `core_dir`.

  Directories are written as they are (see `export` for TF Serving's layout).
  Freezes the coding tables first if the model has none.

  Returns:
    {"full": info, "core": info or None}: what each `dpc_model.json` says.
  """
  if not model.is_frozen:
    model.update()
  functions = model.tf_functions()
  concrete = {name: fn.get_concrete_function() for name, fn in functions.items()}
  base = dict(format=FORMAT, format_version=FORMAT_VERSION,
              architecture=model.architecture, config=model.get_config(),
              fingerprint=saving.fingerprint(model),
              string_names=list(model.string_names))
  full = _module(model.variables)
  for name, fn in functions.items():
    setattr(full, name, fn)
  infos = {"full": _save(full, concrete, full_dir, dict(base, kind="full")),
           "core": None}
  if core_dir:
    core = _module(_unique(v for name in CORE_SIGNATURES
                           for v in concrete[name].variables))
    for name in CORE_SIGNATURES:
      setattr(core, name, functions[name])
    info = _save(core, {n: concrete[n] for n in CORE_SIGNATURES}, core_dir,
                 dict(base, kind="core"))
    if info["custom_ops"]:
      raise RuntimeError(
          f"The core SavedModel uses ops that are not core TensorFlow "
          f"({', '.join(info['custom_ops'])}): model.image_latents or "
          "image_from_latents of this architecture uses tfc ops, which is a bug.")
    infos["core"] = info
  return infos


def next_version(model_base):
  """1 + the largest integer version under `model_base` (1 if none)."""
  versions = files.saved_model_versions(model_base)
  return max(versions) + 1 if versions else 1


def export(model, base_dir, name, version=None, core=True, overwrite=False):
  """Exports `model` for TF Serving: `<base_dir>/<name>/<version>/` (full) and
  `<base_dir>/<name>_core/<version>/` (core ops only).

  Each version directory is written elsewhere and renamed into place, so
  TF Serving, which watches `<base_dir>/<name>`, never loads half a model.

  Args:
    model: a trained `CompressionModel` (e.g. `dpc_tf.load_model(dir)`).
    base_dir: the model base path, as given to TF Serving's --model_base_path
      (without the name).
    name: the served model's name.
    version: integer version; default: the next free one of `<name>`.
    core: also export the core-op SavedModel.
    overwrite: replace existing version directories.

  Returns:
    {"version": int, "full": path, "core": path or None}.
  """
  if not name or os.sep in name:
    raise ValueError(f"The model name must be a plain name, got {name!r}.")
  base_dir = os.path.abspath(os.path.expanduser(base_dir))
  if version is None:
    version = next_version(os.path.join(base_dir, name))
  version = int(version)
  if version < 0:
    raise ValueError(f"TF Serving versions are integers >= 0, got {version}.")
  targets = {"full": os.path.join(base_dir, name, str(version)),
             "core": (os.path.join(base_dir, name + CORE_SUFFIX, str(version))
                      if core else None)}
  for path in filter(None, targets.values()):
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f"{path} exists: pass another version, or "
                            "overwrite=True (--overwrite) to replace it.")
  tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=_make_dirs(base_dir))
  try:
    staged = {kind: os.path.join(tmp, kind) if path else None
              for kind, path in targets.items()}
    export_saved_models(model, staged["full"], staged["core"])
    for kind, path in targets.items():
      if path:
        _make_dirs(os.path.dirname(path))
        if os.path.exists(path):
          shutil.rmtree(path)
        os.replace(staged[kind], path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dict(targets, version=version)


def _make_dirs(path):
  os.makedirs(path, exist_ok=True)
  return path


# -- Finding and describing SavedModels ----------------------------------------


is_saved_model = files.is_saved_model


def resolve(path):
  """The SavedModel directory for `path`: itself, or (as TF Serving does) its
  highest integer version subdirectory."""
  path = os.fspath(path)
  if files.has_saved_model(path):
    return path
  versions = files.saved_model_versions(path)
  if not versions:
    raise saving.ModelFileError(
        f"{path} is not a SavedModel (no saved_model.pb) nor a folder of "
        "integer versions holding one (export one with dpc-export).")
  return os.path.join(path, str(max(versions)))


def read_info(path):
  """The `dpc_model.json` of a SavedModel exported by `export` (path resolved)."""
  directory = resolve(path)
  info_path = os.path.join(directory, INFO_DIR, INFO_FILE)
  if not os.path.isfile(info_path):
    raise saving.ModelFileError(
        f"{directory} is a SavedModel but not one exported by dpc-export (no "
        f"{INFO_DIR}/{INFO_FILE}), so it cannot make or read .dpc files.")
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise saving.ModelFileError(f"{info_path} is unreadable: {e}") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise saving.ModelFileError(f"{info_path} is not a dpc_tf SavedModel description.")
  if info.get("format_version") != FORMAT_VERSION:
    raise saving.ModelFileError(
        f"{info_path} has format version {info.get('format_version')}; this "
        f"dpc_tf reads version {FORMAT_VERSION}. Upgrade dpc_tf or export again.")
  return info


def model_id(info):
  """architecture/config hash/fingerprint, as in `.dpc` headers and `dpc info`."""
  config_hash = saving.config_hash(info["architecture"], info["config"])
  return f"{info['architecture']}/{config_hash}/{info['fingerprint']}"


def _format_signatures(signatures):
  lines = []
  for name, sig in sorted(signatures.items()):
    inputs = ", ".join(f"{k}: {v}" for k, v in sig["inputs"].items())
    outputs = ", ".join(f"{k}: {v}" for k, v in sig["outputs"].items())
    lines.append(f"    {name}({inputs}) -> {outputs}")
  return lines


def describe(path):
  """What `dpc info` prints for a SavedModel directory (or a folder of versions).

  Works without tensorflow-compression, unlike `saved_model_cli show --all`
  on a model with range-coding ops. Reads only JSON for models exported by
  dpc-export; other SavedModels are parsed with TensorFlow.
  """
  directory = resolve(path)
  where = directory if os.path.normpath(directory) == os.path.normpath(path) else (
      f"{path} (version {os.path.basename(directory)}: {directory})")
  try:
    info = read_info(directory)
  except saving.ModelFileError:
    proto = _read_saved_model_proto(directory)
    lines = [f"{where}: SavedModel (not exported by dpc-export)", "  signatures:"]
    lines += _format_signatures(_signatures(proto))
    custom = _custom_ops(proto)
    if custom:
      lines.append(f"  ops outside core TensorFlow: {', '.join(custom)}")
    return "\n".join(lines)
  config = ", ".join(f"{k}={v}" for k, v in sorted(info["config"].items()))
  if info["custom_ops"]:
    kind = ("full (range coding: needs tensorflow-compression's ops to load; "
            "`import tensorflow_compression` in Python, or TF Serving built "
            "with them)")
  else:
    kind = "core (core TensorFlow ops only: stock TF Serving can load it)"
  lines = [f"{where}: dpc_tf SavedModel, {kind}",
           f"  architecture: {info['architecture']}",
           f"  config: {config}",
           f"  id: {model_id(info)}",
           "  signatures:"]
  lines += _format_signatures(info["signatures"])
  if info["custom_ops"]:
    lines.append(f"  tfc ops: {', '.join(info['custom_ops'])}")
  return "\n".join(lines)


# -- Running SavedModels ---------------------------------------------------------


class _ServedModel:
  """The part of a `CompressionModel` that `Codec` uses, over the signatures."""

  is_frozen = True

  def __init__(self, loaded, info):
    self._loaded = loaded  # The signatures need the loaded object alive.
    self._compress = loaded.signatures["compress"]
    self._decompress = loaded.signatures["decompress"]
    self.architecture = info["architecture"]
    self.string_names = tuple(info["string_names"])
    self._config = dict(info["config"])
    lmbdas = self._config.get("lmbdas")
    self.lmbdas = tuple(lmbdas) if lmbdas else None
    self.variable_rate = self.lmbdas is not None
    self.quality_range = (1.0, float(len(lmbdas))) if lmbdas else None
    self.default_quality = (1.0 + len(lmbdas)) / 2 if lmbdas else None

  def get_config(self):
    return dict(self._config)

  def check_quality(self, quality):
    return container.check_quality(self.architecture, self.lmbdas, quality)

  def _quality_inputs(self, quality):
    import tensorflow as tf
    return {"quality": tf.constant(quality, tf.float32)} if self.variable_rate else {}

  def compress_image(self, image, quality=None):
    import tensorflow as tf
    return self._compress(image=tf.convert_to_tensor(image, tf.uint8),
                          **self._quality_inputs(quality))

  def analyze_image(self, image):
    # Rate control on a SavedModel re-runs the whole compress signature.
    return image

  def compress_analyzed(self, image, image_shape, quality=None):
    del image_shape
    return self.compress_image(image, quality)

  def decompress_image(self, image_shape, *strings, quality=None):
    import tensorflow as tf
    inputs = dict(zip(self.string_names, strings), **self._quality_inputs(quality))
    return self._decompress(image_shape=tf.convert_to_tensor(image_shape, tf.int32),
                            **inputs)["image"]


class SavedModelCodec(codec_lib.Codec):
  """A `dpc_tf.Codec` that runs an exported (full) SavedModel's signatures.

  Same API and bitstreams as `dpc_tf.Codec`: the model identity comes from
  the SavedModel's `dpc_model.json`, so files encoded by either decode with
  the other, to the same pixels.

  Args:
    path: a full SavedModel (`<base>/<name>/<version>`) or its model folder
      `<base>/<name>` (the highest version is used).
  """

  def __init__(self, path):  # pylint: disable=super-init-not-called
    # Not Codec.__init__: it hashes the variables of a Python model, while
    # the identity of a SavedModel is in its info file.
    self.path = resolve(path)
    info = read_info(self.path)
    if info["kind"] != "full":
      raise saving.ModelFileError(
          f"{self.path} is a core-op SavedModel (latents only, no range "
          "coding): use the full one, e.g. "
          f"{self.path.replace(CORE_SUFFIX + os.sep, os.sep)}.")
    import tensorflow as tf
    import tensorflow_compression  # pylint: disable=unused-import  # Registers tfc's ops.
    self.info = info
    self.model = _ServedModel(tf.saved_model.load(self.path), info)
    self.config_hash = bytes.fromhex(
        saving.config_hash(info["architecture"], info["config"]))
    self.fingerprint = bytes.fromhex(info["fingerprint"])

  @classmethod
  def load(cls, path):
    return cls(path)
