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
directory can serve all three trunks.
"""

import collections
import hashlib
import json
import os

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


def default_filename(trunk):
  """The converter's default output name, also looked up in directories."""
  trunks_lib.get_trunk(trunk)
  return f"lpips_{trunk}_v{trunks_lib.LPIPS_VERSION}.npz"


def how_to_get(trunk):
  """Instructions for making a weights file, for error messages."""
  spec = trunks_lib.get_trunk(trunk)
  return (
      f"Make one from the official checkpoints with\n"
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
  # Write next to the target and rename, so a reader never sees half a file.
  temporary = path + ".partial"
  with open(temporary, "wb") as f:
    np.savez(f, **payload)
  os.replace(temporary, path)
  sha256 = file_sha256(path)
  with open(sidecar_path(path), "w") as f:
    f.write(f"{sha256}  {os.path.basename(path)}\n")
  return sha256


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


def resolve_weights_path(trunk, weights_path=None):
  """The weights file LPIPS-`trunk` uses: `weights_path`, else $DPC_LPIPS_WEIGHTS.

  Either may be the file or a directory holding `default_filename(trunk)`.
  Raises MissingLPIPSWeightsError when neither is given or the file is absent.
  """
  trunks_lib.get_trunk(trunk)
  if weights_path is None:
    weights_path = os.environ.get(ENV_VAR) or None
    if weights_path is None:
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
