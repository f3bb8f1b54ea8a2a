"""Deterministic stand-ins for the LPIPS checkpoints, for tests and benchmarks.

The official trunk checkpoints are hundreds of megabytes and must not be
downloaded by tests, so parity with the PyTorch reference is checked with
seeded weights instead: both sides (the reference generator script with
PyTorch, and our tests without it) call `seeded_trunk_state_dict` and get
the same arrays, in torchvision's state-dict names, order and OIHW layout.
Each parameter has its own generator seeded by (seed, CRC-32 of its name), so
an array does not depend on the others.

Nothing here is a usable perceptual metric: the weights are random.
"""

import hashlib
import zlib

import numpy as np

from perceptual import trunks as trunks_lib


def _rng(seed, name):
  return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def seeded_trunk_state_dict(trunk, seed=0):
  """A trunk state dict like torchvision's, with seeded random values.

  Kernels are He-normal (std sqrt(2 / fan_in)) so activations keep their
  scale through the ReLUs, and biases are small, as in trained networks.

  Returns:
    {torchvision parameter name: float32 array (OIHW for kernels)}, in
    torchvision's order.
  """
  state = {}
  for name, shape in trunks_lib.torch_trunk_shapes(trunk).items():
    rng = _rng(seed, name)
    if name.endswith(".weight"):
      fan_in = int(np.prod(shape[1:]))
      state[name] = (rng.standard_normal(shape, dtype=np.float32) *
                     np.float32(np.sqrt(2.0 / fan_in)))
    else:
      state[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
  return state


def seeded_lin_state_dict(trunk, seed=0):
  """Non-negative seeded lin weights in the `lpips` package's layout.

  For tests that need some lin weights but not the reference's (parity tests
  use the reference's shipped lin weights, stored in their fixtures).
  """
  state = {}
  for name, shape in trunks_lib.torch_lin_shapes(trunk).items():
    values = np.abs(_rng(seed, name).standard_normal(shape, dtype=np.float32))
    state[name] = values / np.float32(shape[1])
  return state


def state_dict_digest(state_dict):
  """SHA-256 over names and values: tells whether two generators agree."""
  digest = hashlib.sha256()
  for name in sorted(state_dict):
    array = np.ascontiguousarray(state_dict[name], dtype=np.float32)
    digest.update(name.encode("utf-8"))
    digest.update(str(array.shape).encode("utf-8"))
    digest.update(array.tobytes())
  return digest.hexdigest()


def write_seeded_weights_file(path, trunk, seed=0, lin_state_dict=None):
  """Writes an LPIPS weights file from seeded trunk weights via the converter.

  Args:
    path: output file.
    trunk: "alex", "vgg" or "squeeze".
    seed: seed of `seeded_trunk_state_dict`.
    lin_state_dict: lin weights in the `lpips` layout; default
      `seeded_lin_state_dict(trunk, seed)`.

  Returns:
    The file's SHA-256.
  """
  from perceptual import convert  # pylint: disable=import-outside-toplevel
  from perceptual import lpips_weights  # pylint: disable=import-outside-toplevel
  if lin_state_dict is None:
    lin_state_dict = seeded_lin_state_dict(trunk, seed)
  arrays = convert.convert_state_dicts(
      trunk, seeded_trunk_state_dict(trunk, seed), lin_state_dict)
  sources = {"trunk": {"file": f"seeded:{seed}", "sha256": None},
             "lin": {"file": "given", "sha256": None}}
  return lpips_weights.write_weights_file(path, trunk, arrays, sources)


# The PyTorch reference, for the fixture generator and the live parity tests
# (tests marked `reference`). Needs torch, torchvision and lpips 0.1.4.


def torchvision_state_dict(trunk, arrays):
  """The torchvision `features` state dict of a weights file's trunk arrays.

  The inverse of the converter: {"features.0.kernel" HWIO, ...} ->
  {"features.0.weight" OIHW, ...}, numpy float32, lin layers left out.
  """
  state = {}
  for name in trunks_lib.torch_trunk_shapes(trunk):
    prefix, kind = name.rsplit(".", 1)
    if kind == "weight":
      state[name] = np.ascontiguousarray(
          np.transpose(arrays[f"{prefix}.kernel"], (3, 2, 0, 1)))
    else:
      state[name] = np.asarray(arrays[name])
  return state


def reference_lpips(trunk, seed=0, calibrated=True, spatial=False, state=None):
  """The reference `lpips.LPIPS` with the seeded (or given) trunk weights.

  Built with `pnet_rand=True`, so nothing is downloaded; the lin layers are
  the ones shipped in the `lpips` package, as with the official weights.
  `state` is a torchvision trunk state dict (numpy) to use instead of the
  seeded one, e.g. real ImageNet weights.
  """
  import lpips  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  model = lpips.LPIPS(net=trunk, pnet_rand=True, lpips=calibrated,
                      spatial=spatial, verbose=False)
  if state is None:
    state = seeded_trunk_state_dict(trunk, seed)
  loaded = set()
  with torch.no_grad():
    # The reference splits torchvision's `features` into slices but keeps
    # its indices: net.slice2.3.squeeze.weight is features.3.squeeze.weight.
    for name, parameter in model.net.named_parameters():
      _, index, rest = name.split(".", 2)
      key = f"features.{index}.{rest}"
      parameter.copy_(torch.from_numpy(state[key]))
      loaded.add(key)
  if loaded != set(state):
    raise AssertionError(f"Reference parameters {sorted(set(state) - loaded)} "
                         "were not set.")
  return model.eval()


def reference_lin_state_dict(trunk):
  """The lin weights shipped in the installed `lpips` package, as numpy."""
  import lpips  # pylint: disable=import-outside-toplevel
  model = lpips.LPIPS(net=trunk, pnet_rand=True, verbose=False)
  return {name: value.detach().numpy().copy()
          for name, value in model.state_dict().items()
          if name in trunks_lib.torch_lin_shapes(trunk)}


def run_reference(model, x0, x1):
  """Runs a reference model on NHWC [0, 1] numpy batches.

  Returns distances [batch], or maps [batch, H, W, 1] for a spatial model.
  """
  import torch  # pylint: disable=import-outside-toplevel
  to_torch = lambda x: torch.from_numpy(
      np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float32))
  with torch.no_grad():
    result = model(to_torch(x0), to_torch(x1), normalize=True).numpy()
  if model.spatial:
    return np.transpose(result, (0, 2, 3, 1))
  return result.reshape(-1)
