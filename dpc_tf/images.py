"""Reading and writing 8-bit images, with clear errors for what we can't code.

`read_image` is the one reader of image files; its `alpha` argument says what
becomes of transparency, because callers differ: `dpc compress` codes what
the file holds (alpha losslessly), while the codecs `dpc eval` and studies
compare code three colour channels only.
"""

import numpy as np

from dpc_tf.files import write_atomic

# Pillow modes we decode to 8-bit channels, and what they become.
_CONVERT = {"1": "L", "L": "L", "LA": "LA", "P": None, "PA": "RGBA",
            "RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
            "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA",
            "La": "LA"}


class ImageError(ValueError):
  """An image file cannot be read or is of a kind the codec does not take."""


ALPHA_POLICIES = ("keep", "composite", "drop")


def read_image(path, alpha="keep", notes=None):
  """Reads an image file (a path or a binary file object) as uint8 [H, W, C].

  Palette and CMYK images are converted to RGB(A); the EXIF orientation is
  applied. 16-bit and floating-point images raise `ImageError` naming the
  file, since the codecs are 8-bit.

  Args:
    alpha: the policy for transparency and gray:
      "keep": the file's channels, C in 1 (gray), 2 (gray + alpha), 3 (RGB)
        or 4 (RGBA): what `dpc_tf.Codec` codes (alpha losslessly).
      "composite": RGB, C = 3, for codecs that code colour only (`dpc eval`,
        studies): gray becomes three equal channels, a fully opaque alpha is
        dropped, and real transparency is composited over white (transparent
        pixels can hold anything).
      "drop": RGB, C = 3, alpha discarded as it is: what the training
        pipeline's `tf.io.decode_image(channels=3)` does to training images.
    notes: a list; with "composite", a sentence naming the file is appended
      when transparency was composited.
  """
  if alpha not in ALPHA_POLICIES:
    raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}.")
  from PIL import Image, ImageOps, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      # Pillow opens 16-bit RGB(A) PNGs as 8-bit modes and drops the low
      # bytes; only the decoder's raw mode ("RGB;16B") tells.
      if any(";16" in str(tile.args) for tile in (im.tile or [])):
        raise ImageError(
            f"{path}: 16-bit images are not supported; convert to 8-bit first "
            "(e.g. with ImageMagick: convert in.png -depth 8 out.png).")
      im = ImageOps.exif_transpose(im)
      mode = im.mode
      if mode not in _CONVERT:
        raise ImageError(
            f"{path}: {mode} images ({_describe(mode)}) are not supported; "
            "convert to 8-bit RGB or gray first (e.g. with ImageMagick: "
            "convert in.png -depth 8 out.png).")
      target = _CONVERT[mode]
      if target is None:  # Palette: keep transparency if there is any.
        target = "RGBA" if "transparency" in im.info else "RGB"
      if im.mode != target:
        im = im.convert(target)
      array = np.asarray(im, dtype=np.uint8)
  except ImageError:
    raise
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file.") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise ImageError(f"{path}: not a readable image ({e}).") from None
  if array.ndim == 2:
    array = array[..., None]
  image = check_image(array, str(path))
  if alpha == "keep":
    return image
  if image.shape[-1] in (2, 4):
    color, opacity = image[..., :-1], image[..., -1:]
    if alpha == "composite" and opacity.min() < 255:
      # Over white: color * a + 255 * (1 - a), rounded.
      weight = opacity.astype(np.float64) / 255.0
      color = np.round(color * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
      if notes is not None:
        notes.append(f"{path}: has transparent pixels; composited over white.")
    image = color
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image)


def _describe(mode):
  return {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit",
          "I": "32-bit integer", "F": "floating-point"}.get(mode, "unsupported")


def check_image(image, name="image"):
  """Checks an in-memory image: uint8 [H, W, C] with C in 1-4."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}; "
                     "16-bit and float images are not supported.")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ImageError(f"{name}: expected an [H, W, C] image with 1-4 channels, "
                     f"got shape {image.shape}.")
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ImageError(f"{name}: empty image {image.shape}.")
  return image


def write_image(path, image, overwrite=False):
  """Writes a PNG atomically (`files.write_atomic`: temporary file + rename)."""
  from PIL import Image
  image = check_image(image, str(path))
  mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
  array = image[..., 0] if image.shape[-1] == 1 else image
  write_atomic(path, lambda f: Image.fromarray(array, mode).save(f, format="PNG"),
               overwrite)
