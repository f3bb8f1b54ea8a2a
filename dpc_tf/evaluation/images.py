"""Evaluation images as 8-bit RGB.

Files are read with `dpc_tf.read_image` (Pillow; palette, CMYK etc. converted,
EXIF orientation applied, 16-bit and float images rejected with `ImageError`).
Every codec compared codes three colour channels, so:

- gray images become three equal channels;
- with an alpha channel, a fully opaque alpha is dropped; real transparency is
  composited over white, and `load_image` returns a note saying so (the codecs
  compared code no alpha, and transparent pixels can hold anything).
"""

import numpy as np

from dpc_tf.images import ImageError, read_image

__all__ = ["ImageError", "load_image"]


def load_image(path):
  """Returns (uint8 array [height, width, 3], note or None) for an image file.

  Raises:
    ImageError: if the file cannot be read or is not an 8-bit image.
  """
  image = read_image(path)
  channels = image.shape[-1]
  note = None
  if channels in (2, 4):
    alpha = image[..., -1:]
    color = image[..., :-1]
    if alpha.min() < 255:
      # Composite over white: color * a + 255 * (1 - a), rounded.
      weight = alpha.astype(np.float64) / 255.0
      color = np.round(color * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
      note = f"{path}: has transparent pixels; composited over white."
    image = color
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image), note
