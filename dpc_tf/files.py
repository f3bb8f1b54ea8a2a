"""The user's files: what a model path means, and writing outputs safely.

One notion of a model path, for `dpc compress/decompress/info/eval`,
`dpc-export`, `load_codec` and `load_model` alike (`resolve_model`):

    dir/model.json               a model directory (dpc_tf.save_model)
    run/model/model.json         a dpc-train run directory: its model/
    dir/saved_model.pb, dir/<n>/ an exported SavedModel, or TF Serving's
                                 folder of integer versions

Outputs are written to a temporary file next to the target and renamed, so a
crash never leaves half a file; they get the permissions an ordinary write
would (the umask's), not the owner-only ones of a temporary file.

No TensorFlow here: `dpc info` and the command line's checks stay fast.
"""

import os
import shutil
import tempfile

MODEL_FILE = "model.json"
RUN_MODEL_DIR = "model"  # Where dpc-train puts the model inside its output_dir.
SAVED_MODEL_FILE = "saved_model.pb"
ZOO_PREFIX = "zoo:"  # A model path naming a model of the shipped zoo.


class ModelFileError(ValueError):
  """A model path is missing, not a model, or does not match its weights."""


# -- Model paths ---------------------------------------------------------------


def has_saved_model(directory):
  return os.path.isfile(os.path.join(directory, SAVED_MODEL_FILE))


def saved_model_versions(model_base):
  """The integer versions under a TF Serving model folder that hold a SavedModel."""
  if not os.path.isdir(model_base):
    return []
  return [int(d) for d in os.listdir(model_base)
          if d.isdigit() and has_saved_model(os.path.join(model_base, d))]


def is_saved_model(path):
  """True if `path` is a SavedModel or a TF Serving model dir of versions."""
  path = os.fspath(path)
  return os.path.isdir(path) and (has_saved_model(path) or
                                  bool(saved_model_versions(path)))


def resolve_model(path, saved_model=True):
  """What a model path names: ("model", model directory) or ("saved_model", path).

  A dpc-train run directory resolves to its `model/`, and `zoo:NAME` to the
  shipped model NAME (`dpc_tf.zoo`). Raises `ModelFileError`
  with a message for the user when `path` is missing or not a model; with
  `saved_model=False`, also when it is an exported SavedModel.
  """
  path = os.path.expanduser(os.fspath(path))
  if path.startswith(ZOO_PREFIX):
    from dpc_tf import zoo  # pylint: disable=import-outside-toplevel
    try:
      return "model", zoo.model_dir(path[len(ZOO_PREFIX):])
    except zoo.ZooError as e:
      raise ModelFileError(str(e)) from None
  if not os.path.exists(path):
    raise ModelFileError(f"Model {path} does not exist.")
  if not os.path.isdir(path):
    raise ModelFileError(
        f"Model {path} is a file; a model is a directory (dpc_tf.save_model, "
        "a dpc-train run, or a SavedModel exported by dpc-export).")
  if os.path.isfile(os.path.join(path, MODEL_FILE)):
    return "model", path
  inner = os.path.join(path, RUN_MODEL_DIR)
  if os.path.isfile(os.path.join(inner, MODEL_FILE)):
    return "model", inner
  if is_saved_model(path):
    if not saved_model:
      raise ModelFileError(
          f"{path} is an exported SavedModel; this needs the dpc_tf model "
          "directory it was exported from (or use dpc_tf.load_codec, which "
          "runs SavedModels).")
    return "saved_model", path
  if os.path.isdir(inner) or os.path.isdir(os.path.join(path, "backup")):
    raise ModelFileError(
        f"{path} is a dpc-train run without a finished model ({inner} has no "
        f"{MODEL_FILE}): let the run finish, or rerun its command to resume it.")
  raise ModelFileError(
      f"{path} is not a dpc_tf model directory (no {MODEL_FILE}), a dpc-train "
      f"run (no {RUN_MODEL_DIR}/{MODEL_FILE}) nor an exported SavedModel (no "
      f"{SAVED_MODEL_FILE}). Save one with dpc_tf.save_model() or train one "
      "with dpc-train.")


# -- Writing outputs -------------------------------------------------------------


def _umask():
  # Linux reports it without changing it; elsewhere set-and-restore, which
  # briefly changes it for every thread of the process.
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def default_mode(directory=False):
  """The permissions `open()` / `os.mkdir()` would give under the umask."""
  return (0o777 if directory else 0o666) & ~_umask()


def check_writable_target(path, overwrite=False):
  """Raises a clear OSError if `path` cannot be (over)written as a file.

  Called before any work, so a refusal costs nothing; `write_atomic` checks
  again at the end.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory; give a file name.")
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it.")
  directory = os.path.dirname(path) or "."
  if not os.path.isdir(directory):
    what = "is not a directory" if os.path.exists(directory) else "does not exist"
    raise FileNotFoundError(f"Cannot write {path}: the folder {directory} {what}.")


def write_atomic(path, write, overwrite=False):
  """Calls write(file) on a temporary file, then renames it to `path`.

  The file gets the permissions an ordinary write would give: those of the
  file it replaces, else the umask's.
  """
  path = os.fspath(path)
  check_writable_target(path, overwrite)
  mode = (os.stat(path).st_mode & 0o7777 if os.path.isfile(path)
          else default_mode())
  directory = os.path.dirname(os.path.abspath(path))
  try:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  except PermissionError:
    raise PermissionError(f"Cannot write {path}: no permission to create files "
                          f"in {directory}.") from None
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def staging_directory(target, prefix=".tmp-"):
  """A new empty directory next to `target`, to fill and then `publish`.

  It has the permissions `os.mkdir` would give (tempfile's are owner-only).
  """
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
  os.chmod(tmp, default_mode(directory=True))
  return tmp


def publish_directory(tmp, target):
  """Renames the filled staging directory `tmp` to `target`, replacing it."""
  if os.path.exists(target):
    shutil.rmtree(target)
  os.replace(tmp, target)
