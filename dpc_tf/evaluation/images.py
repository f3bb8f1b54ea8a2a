"""Reading evaluation images as 8-bit RGB.

Codecs are compared on the pixel values as stored in the file: EXIF
orientation and ICC profiles are ignored (neither changes what a codec has to
code). Modes are converted as follows:

- RGB: used as is.
- Grayscale (L, 1) and palette (P) images: converted to RGB (gray becomes three
  equal channels), so every codec codes a 3-channel image.
- Images with alpha (RGBA, LA, PA, P with transparency): if every pixel is
  opaque the alpha channel is dropped; otherwise the image is composited over
  white and a note is returned, because the codecs compared code no alpha.
- CMYK, YCbCr, LAB, HSV: converted to RGB with Pillow's conversion.
- More than 8 bits per sample (16-bit PNG/TIFF, 32-bit integer or float):
  rejected with `ImageError`; the metrics and most codecs here are 8-bit.
"""

import numpy as np


class ImageError(ValueError):
  """An input image cannot be evaluated (unreadable, or not 8-bit)."""


# Pillow modes with more than 8 bits per sample.
_HIGH_BIT_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "RGB;16", "RGBA;16")


def _decoder_raw_mode(image):
  # Pillow opens 16-bit RGB(A) PNGs as mode RGB(A) and drops the low byte when
  # loading; only the decoder's raw mode (e.g. "RGB;16B") shows the real depth.
  if not image.tile:
    return ""
  args = image.tile[0].args
  return str(args[0] if isinstance(args, tuple) and args else args)


def load_image(path):
  """Returns (uint8 array [height, width, 3], note or None) for an image file.

  Raises:
    ImageError: if the file cannot be read or has more than 8 bits per sample.
  """
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      raw_mode = _decoder_raw_mode(image)
      if image.mode in _HIGH_BIT_DEPTH_MODES or ";16" in str(raw_mode):
        raise ImageError(
            f"{path}: {image.mode} image with more than 8 bits per sample "
            f"(decoder mode {raw_mode!r}); dpc eval compares 8-bit RGB. Convert it "
            "to 8-bit first if that is what you want to evaluate.")
      image.load()
      return _to_rgb(image, path)
  except ImageError:
    raise
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
    raise ImageError(f"{path}: cannot read image ({error}).") from error


def _to_rgb(image, path):
  from PIL import Image
  note = None
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  elif image.mode == "PA":
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "RGBa", "La"):
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
      background = Image.new("RGBA", image.size, (255, 255, 255, 255))
      image = Image.alpha_composite(background, image.convert("RGBA"))
      note = f"{path}: has transparent pixels; composited over white."
  if image.mode != "RGB":
    image = image.convert("RGB")
  array = np.asarray(image, dtype=np.uint8)
  if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
    raise ImageError(f"{path}: decoded to shape {array.shape}, expected [height, width, 3].")
  return array, note
