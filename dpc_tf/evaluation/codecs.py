"""Classical image codecs with the interface `dpc eval` measures.

Every codec is a small class with a `name`, a default sweep of `settings`
(chosen to span roughly 0.05-2 bpp on natural photos such as Kodak), and
`encode(image, setting) -> bytes` / `decode(data, setting) -> image`, where
images are uint8 arrays of shape [height, width, 3]. The bytes are the real
output of each library's encoder and are decoded by the same library's
decoder, so bpp counts every byte a user would store (headers included).

Settings are numbers whose meaning depends on the codec (`setting_name` says
which): a quality index, a target rate or a Butteraugli distance. Learned codecs
(`ModelCodec` in `dpc_tf.evaluation.model_codec`) follow the same interface
with model paths as settings.

Only Pillow, pillow-heif and imagecodecs are imported, and only when a codec is
used, so listing codecs is cheap.
"""

import io

import numpy as np


class EvalCodec:
  """Base class: a named codec swept over a list of settings, as `dpc eval`
  measures it (not `dpc_tf.Codec`, the learned codec's API).

  Subclasses set `name`, `setting_name`, `default_settings` and implement
  `encode` and `decode`; `unavailable_reason` reports a missing library or
  encoder so that callers can skip the codec with a clear message.
  """

  name = None
  setting_name = "setting"
  # The sweep used when the user does not override it.
  default_settings = ()
  # Learned codecs are drawn with solid lines, classical ones dashed.
  learned = False

  def __init__(self, name, settings=None):
    self.name = name
    settings = self.default_settings if settings is None else settings
    # One entry per distinct setting (as identified in points.csv).
    self.settings = list({self.setting_key(s): s for s in settings}.values())
    if not self.settings:
      raise ValueError(f"Codec {self.name!r} needs at least one setting.")

  def parse_setting(self, text):
    """Converts a setting given on the command line to its value."""
    return _parse_number(text, self.name)

  def setting_key(self, setting):
    """The text that identifies a setting in points.csv (stable across runs)."""
    if isinstance(setting, float) and setting.is_integer():
      return str(int(setting))
    return format(setting, "g") if isinstance(setting, float) else str(setting)

  @classmethod
  def unavailable_reason(cls):
    """None when the codec can run here, else why not and what to install."""
    return None

  def prepare(self, setting):
    """Called once before the images of a setting are coded (e.g. to load a
    model). Errors raised here skip the whole setting."""

  def encode(self, image, setting):
    raise NotImplementedError

  def encode_file(self, path, image, setting):
    """Codes the image read from `path`; the evaluation calls this. Codecs code
    the pixels; `Original` keeps the file as it is."""
    return self.encode(image, setting)

  def decode(self, data, setting):
    raise NotImplementedError

  def describe(self):
    """One line saying how the codec is configured, for the summary."""
    return self.__class__.__doc__.strip().splitlines()[0]


def _parse_number(text, codec_name):
  try:
    value = float(text)
  except ValueError:
    raise ValueError(
        f"Setting {text!r} for codec {codec_name!r} is not a number.") from None
  return int(value) if value.is_integer() and "." not in str(text) else value


def _check_image(image):
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
        "Codecs take uint8 RGB images of shape [height, width, 3]; got dtype "
        f"{image.dtype} and shape {image.shape}.")
  return np.ascontiguousarray(image)


def _pillow_encode(image, format_name, **options):
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(_check_image(image), "RGB").save(buffer, format=format_name, **options)
  return buffer.getvalue()


def _pillow_decode(data, expected_format):
  from PIL import Image
  with Image.open(io.BytesIO(data)) as decoded:
    if decoded.format != expected_format:
      raise ValueError(f"Expected a {expected_format} stream, Pillow read {decoded.format}.")
    return np.asarray(decoded.convert("RGB"))


def _pillow_feature_reason(feature, what):
  from PIL import features
  if not features.check(feature):
    return (f"this Pillow build has no {what} support (PIL.features.check({feature!r}) "
            "is False); install a Pillow wheel built with it.")
  return None


class JPEG(EvalCodec):
  """JPEG (Pillow/libjpeg-turbo), optimised Huffman tables, quality 1-95."""

  setting_name = "quality"
  default_settings = (1, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)

  # Pillow's `subsampling`: 0 is 4:4:4, 2 is 4:2:0.
  _SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}

  def __init__(self, name, subsampling, settings=None):
    super().__init__(name, settings)
    self.subsampling = subsampling

  def encode(self, image, setting):
    # optimize=True builds image-specific Huffman tables (cjpeg -optimize):
    # smaller files at no quality cost, as a fair baseline should use.
    return _pillow_encode(image, "JPEG", quality=int(setting),
                          subsampling=self._SUBSAMPLING[self.subsampling],
                          optimize=True)

  def decode(self, data, setting):
    return _pillow_decode(data, "JPEG")

  @classmethod
  def unavailable_reason(cls):
    return _pillow_feature_reason("jpg", "JPEG")

  def describe(self):
    return f"JPEG {self.subsampling} (Pillow/libjpeg-turbo, optimize=True), setting = quality"


class JPEG2000(EvalCodec):
  """JPEG 2000 (Pillow/OpenJPEG), 9/7 wavelet + colour transform, target bpp."""

  setting_name = "target_bpp"
  default_settings = (0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                      1.25, 1.5, 2.0)

  def parse_setting(self, text):
    return float(_parse_number(text, self.name))

  def encode(self, image, setting):
    # OpenJPEG's "rates" are compression ratios against the raw 8-bit RGB
    # image (24 bpp). Pillow's defaults (reversible 5/3 wavelet, no colour
    # transform) are for lossless coding; lossy coding wants the irreversible
    # 9/7 wavelet and the colour transform, as Kakadu and OpenJPEG's own
    # tools use. The raw codestream (no .jp2 boxes) is what gets stored.
    return _pillow_encode(image, "JPEG2000", quality_mode="rates",
                          quality_layers=[24.0 / float(setting)],
                          irreversible=True, mct=1, no_jp2=True)

  def decode(self, data, setting):
    return _pillow_decode(data, "JPEG2000")

  @classmethod
  def unavailable_reason(cls):
    return _pillow_feature_reason("jpg_2000", "JPEG 2000 (OpenJPEG)")

  def describe(self):
    return ("JPEG 2000 (Pillow/OpenJPEG, 9/7 wavelet, MCT, raw codestream), "
            "setting = target bpp")


class WebP(EvalCodec):
  """WebP lossy (Pillow/libwebp), method 6, quality 0-95."""

  setting_name = "quality"
  default_settings = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)

  def encode(self, image, setting):
    # method=6 is libwebp's slowest, best-compressing search.
    return _pillow_encode(image, "WEBP", quality=int(setting), method=6, lossless=False)

  def decode(self, data, setting):
    return _pillow_decode(data, "WEBP")

  @classmethod
  def unavailable_reason(cls):
    return _pillow_feature_reason("webp", "WebP")

  def describe(self):
    return "WebP lossy (Pillow/libwebp, method=6), setting = quality"


class AVIF(EvalCodec):
  """AVIF (Pillow's AVIF plugin/libavif with aom), speed 6, quality 0-90."""

  setting_name = "quality"
  default_settings = (0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90)

  def __init__(self, name, subsampling, settings=None):
    super().__init__(name, settings)
    self.subsampling = subsampling

  def encode(self, image, setting):
    # speed=6 is libavif's default trade-off; slower speeds gain a few percent.
    return _pillow_encode(image, "AVIF", quality=int(setting),
                          subsampling=self.subsampling, speed=6)

  def decode(self, data, setting):
    return _pillow_decode(data, "AVIF")

  @classmethod
  def unavailable_reason(cls):
    reason = _pillow_feature_reason("avif", "AVIF")
    if reason:
      return reason
    from PIL import _avif
    if not any(_avif.encoder_codec_available(c) for c in ("aom", "rav1e", "svt")):
      return "Pillow's libavif has no AV1 encoder (aom, rav1e or svt)."
    return None

  def describe(self):
    return f"AVIF {self.subsampling} (Pillow/libavif, speed=6), setting = quality"


class HEVC(EvalCodec):
  """HEVC intra in HEIF (pillow-heif/libheif with x265, the coder in BPG)."""

  setting_name = "quality"
  default_settings = (0, 5, 10, 15, 20, 25, 30, 40, 50, 55, 60, 65)
  # libheif's own defaults for its x265 plugin, stated so that results do not
  # move if those defaults change.
  X265_PRESET = "slow"
  X265_TUNE = "ssim"

  def __init__(self, name, chroma, settings=None):
    super().__init__(name, settings)
    self.chroma = chroma  # "444" or "420"

  def encode(self, image, setting):
    import pillow_heif
    image = _check_image(image)
    height, width, _ = image.shape
    heif = pillow_heif.from_bytes("RGB", (width, height), image.tobytes())
    buffer = io.BytesIO()
    # libheif maps quality 0-100 onto x265's constant rate factor.
    heif.save(buffer, quality=int(setting), chroma=self.chroma,
              enc_params={"preset": self.X265_PRESET, "tune": self.X265_TUNE})
    return buffer.getvalue()

  def decode(self, data, setting):
    import pillow_heif
    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
    if heif.mode != "RGB":
      raise ValueError(f"Expected an RGB HEIF image, libheif decoded mode {heif.mode}.")
    return np.asarray(heif)

  @classmethod
  def unavailable_reason(cls):
    try:
      import pillow_heif
    except ImportError:
      return "pillow-heif is not installed (pip install pillow-heif)."
    info = pillow_heif.libheif_info()
    if "x265" not in info.get("encoders", {}):
      return ("pillow-heif's libheif has no x265 HEVC encoder (encoders: "
              f"{sorted(info.get('encoders', {}))}); install a wheel that bundles x265.")
    if not info.get("decoders"):
      return "pillow-heif's libheif has no HEVC decoder (libde265)."
    return None

  def describe(self):
    return (f"HEVC intra 4:{self.chroma[1]}:{self.chroma[2]} in HEIF (pillow-heif/libheif, "
            f"x265 preset={self.X265_PRESET} tune={self.X265_TUNE}), setting = quality")


class JPEGXL(EvalCodec):
  """JPEG XL (imagecodecs/libjxl), effort 7, Butteraugli distance 25-0.8."""

  setting_name = "distance"
  default_settings = (25.0, 18.0, 13.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.3, 1.0, 0.8)
  EFFORT = 7  # libjxl's default

  def parse_setting(self, text):
    return float(_parse_number(text, self.name))

  def encode(self, image, setting):
    import imagecodecs
    return imagecodecs.jpegxl_encode(_check_image(image), distance=float(setting),
                                     effort=self.EFFORT)

  def decode(self, data, setting):
    import imagecodecs
    decoded = imagecodecs.jpegxl_decode(data)
    if decoded.dtype != np.uint8:
      raise ValueError(f"libjxl decoded dtype {decoded.dtype}, expected uint8.")
    return decoded

  @classmethod
  def unavailable_reason(cls):
    try:
      import imagecodecs
    except ImportError:
      return "imagecodecs is not installed (pip install imagecodecs)."
    if not imagecodecs.JPEGXL.available:
      return "this imagecodecs build has no JPEG XL (libjxl) support."
    return None

  def describe(self):
    return f"JPEG XL (imagecodecs/libjxl, effort={self.EFFORT}), setting = Butteraugli distance"


class Original(EvalCodec):
  """The image files as given, not coded again: the reference point."""

  setting_name = "file"
  default_settings = ("as-given",)
  # One point (the files' own rate and pixels): plotted as a level, no BD-rate.
  reference = True

  def parse_setting(self, text):
    return str(text)

  def encode(self, image, setting):
    raise ValueError("the original codec stores image files as they are; it has no encoder "
                     "for pixel arrays (use encode_file with the image's path).")

  def encode_file(self, path, image, setting):
    with open(path, "rb") as stream:
      return stream.read()

  def decode(self, data, setting):
    # The same reading as the evaluation's (EXIF orientation, gray to RGB).
    from dpc_tf.images import read_image
    return read_image(io.BytesIO(data), alpha="composite")

  def describe(self):
    return "the image files as given (their own format and size), not coded again"


# Name -> (class, constructor options) of every classical codec, in table order.
_REGISTRY = {
    "original": (Original, {}),
    "jpeg420": (JPEG, {"subsampling": "4:2:0"}),
    "jpeg444": (JPEG, {"subsampling": "4:4:4"}),
    "jpeg2000": (JPEG2000, {}),
    "webp": (WebP, {}),
    "avif": (AVIF, {"subsampling": "4:2:0"}),
    "avif444": (AVIF, {"subsampling": "4:4:4"}),
    "hevc420": (HEVC, {"chroma": "420"}),
    "hevc444": (HEVC, {"chroma": "444"}),
    "jpegxl": (JPEGXL, {}),
}

# What `dpc eval` runs when --codecs is not given.
DEFAULT_CODECS = ("jpeg420", "jpeg444", "jpeg2000", "webp", "avif", "hevc444",
                  "hevc420", "jpegxl")


def available_codecs():
  """Names of the classical codecs known to `get_codec`."""
  return list(_REGISTRY)


def _lookup(name):
  if name not in _REGISTRY:
    raise ValueError(f"Unknown codec {name!r}; known: {', '.join(_REGISTRY)}.")
  return _REGISTRY[name]


def unavailable_reason(name):
  """None if the classical codec `name` can run here, else the reason."""
  return _lookup(name)[0].unavailable_reason()


def get_codec(name, settings=None):
  """Returns the classical codec `name`, sweeping `settings` (or its defaults)."""
  cls, options = _lookup(name)
  return cls(name, settings=settings, **options)


def library_versions():
  """Versions of the libraries behind the codecs and metrics, for reports."""
  import PIL
  from PIL import features
  versions = {"Pillow": PIL.__version__, "numpy": np.__version__}
  for feature, label in (("libjpeg_turbo", "libjpeg-turbo"), ("jpg_2000", "OpenJPEG"),
                         ("webp", "libwebp"), ("avif", "libavif")):
    try:
      versions[label] = features.version(feature)
    except Exception:  # pylint: disable=broad-except
      versions[label] = None
  try:
    from PIL import _avif
    versions["libavif codecs"] = _avif.codec_versions()
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    import pillow_heif
    info = pillow_heif.libheif_info()
    versions["pillow-heif"] = pillow_heif.__version__
    versions["libheif"] = info.get("libheif")
    versions["x265"] = info.get("encoders", {}).get("x265")
    versions["libde265"] = ", ".join(info.get("decoders", {}).values()) or None
  except ImportError:
    versions["pillow-heif"] = None
  try:
    import imagecodecs
    versions["imagecodecs"] = imagecodecs.__version__
    versions["libjxl"] = imagecodecs.jpegxl_version()
  except ImportError:
    versions["imagecodecs"] = None
  for module in ("bjontegaard", "matplotlib"):
    try:
      versions[module] = __import__(module).__version__
    except ImportError:
      versions[module] = None
  return versions
