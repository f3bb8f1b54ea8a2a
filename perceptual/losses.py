"""Distortion losses for training codecs: `mse`, `msssim` and (with LPIPS) `dpc`.

Every distortion is a `tf.keras.losses.Loss` that maps two NHWC batches in
[0, 1] to one value per image (shape [batch]); the codec's `train_step` forms
λ·bpp + distortion per image and averages over the global batch itself, which
keeps gradients right under `tf.distribute`. `components()` names the terms a
loss is made of, so training can log each of them.

Build one by name with `get_distortion("msssim")`; a user's own loss is any
`Distortion` subclass (or a Keras loss returning per-image values).
"""

import tensorflow as tf

from perceptual import msssim as msssim_lib

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

  def __init__(self, name=None, **kwargs):
    kwargs.setdefault("reduction", tf.keras.losses.Reduction.NONE)
    super().__init__(name=name or self.registered_name, **kwargs)

  def components(self, x, x_hat):
    """The named terms of the loss, each of shape [batch]."""
    return {self.name: self.call(x, x_hat)}


@register_distortion("mse")
class MSE(Distortion):
  """Mean squared error per image, on the [0, 1] scale."""

  def call(self, x, x_hat):
    x = check_images(x, "x")
    x_hat = check_images(x_hat, "x_hat")
    return tf.reduce_mean(tf.math.squared_difference(x, x_hat), axis=(1, 2, 3))


@register_distortion("msssim")
class MSSSIM(Distortion):
  """1 - MS-SSIM per image; see `perceptual.msssim` for small images."""

  def call(self, x, x_hat):
    x = check_images(x, "x")
    x_hat = check_images(x_hat, "x_hat")
    return 1.0 - msssim_lib.msssim(x, x_hat)


def mse(x, x_hat):
  """Functional form of `MSE`."""
  return MSE()(x, x_hat)


def msssim_loss(x, x_hat):
  """Functional form of `MSSSIM` (1 - MS-SSIM)."""
  return MSSSIM()(x, x_hat)
