"""`Codec`: images to `.dpc` bytes and back, with any trained model.

    codec = dpc_tf.load_codec("runs/hyperprior")
    data = codec.encode(image)        # uint8 [H, W, C], C in 1-4
    assert codec.decode(data).shape == image.shape

    codec = dpc_tf.zoo.load_codec("dpc")      # variable-rate
    data = codec.encode(image, quality=2.5)   # any quality in codec.quality_range
    data = codec.encode(image, bpp=0.3)       # rate control

Encoding is deterministic (the same image gives the same bytes) and decoding
gives the same pixels in any process on the same platform. Floating-point
differences between CPU types can change the entropy model's indexes, so move
bitstreams between machines of one kind (a known property of learned codecs).

Untrusted input: `decode` refuses headers above `max_pixels` (default twice
Pillow's bomb limit) and strings too short for the declared size, but a
crafted string can still hang tfc's range decoder forever (see
`dpc_tf.isolation`); `load_codec(path, isolate=True)` decodes in a worker
process with a time budget instead.

`dpc_tf.load_codec` (in `dpc_tf.loading`) opens any model path: a model
directory as this `Codec`, an exported SavedModel as `serving.SavedModelCodec`.
"""

import dataclasses
import os
import zlib

import numpy as np

from dpc_tf import container, images, saving
from dpc_tf.container import QualityError

# Rate control stops within this relative distance of the target bpp.
BPP_TOLERANCE = 0.03


@dataclasses.dataclass(frozen=True)
class RateControlResult:
  """What `Codec.encode_at_bpp` got."""
  data: bytes          # The bitstream.
  quality: float       # The quality it was coded at.
  bpp: float           # Its bits per pixel (whole file, header included).
  target_bpp: float
  reachable: bool      # False: the target is outside the model's range and
                       # `data` is the closest rate it has.

  def describe(self):
    text = (f"target {self.target_bpp:.4g} bpp -> {self.bpp:.4f} bpp at "
            f"quality {self.quality:.4f}")
    if not self.reachable:
      text += (" (the closest this model reaches: the target is "
               f"{'below' if self.target_bpp < self.bpp else 'above'} its range)")
    return text


class Codec:
  """Encodes and decodes images with a trained `CompressionModel`.

  Set `isolate` (True, or a `DecoderProcess`) to decode in a worker process
  with a time budget: only for a codec loaded from a path (`load_codec`).
  """

  isolate = False
  model_path = None

  def __init__(self, model):
    if not model.is_frozen:
      model.update()
    self.model = model
    self.config_hash = bytes.fromhex(
        saving.config_hash(model.architecture, model.get_config()))
    self.fingerprint = bytes.fromhex(saving.fingerprint(model))

  @classmethod
  def load(cls, path):
    codec = cls(saving.load_model(path))
    codec.model_path = os.fspath(path)
    return codec

  @property
  def model_id(self):
    return (f"{self.model.architecture}/{self.config_hash.hex()}/"
            f"{self.fingerprint.hex()}")

  @property
  def quality_range(self):
    """(lowest, highest) quality of a variable-rate model, else None."""
    return self.model.quality_range

  @property
  def supports_rate_control(self):
    """Whether `encode(bpp=...)` works: variable-rate models only."""
    return bool(self.model.variable_rate)

  def _split(self, image):
    """(RGB uint8 image, zlib alpha bytes, header fields) of a checked image."""
    image = images.check_image(image)
    height, width, channels = image.shape
    color = image[..., :3] if channels >= 3 else np.repeat(image[..., :1], 3, -1)
    alpha = b""
    if channels in (2, 4):
      alpha = zlib.compress(np.ascontiguousarray(image[..., -1]).tobytes(), 9)
    return color, alpha, (height, width, channels)

  def _pack(self, outputs, alpha, size, quality):
    strings = tuple(outputs[name].numpy() for name in self.model.string_names)
    header = container.Header(self.model.architecture, self.config_hash,
                              self.fingerprint, *size, quality=quality)
    return container.pack(container.Bitstream(header, strings, alpha))

  def encode(self, image, quality=None, bpp=None):
    """uint8 [H, W, C] -> bytes of a `.dpc` bitstream.

    Variable-rate models take a `quality` in `quality_range`, or a target
    `bpp` (rate control; raises `QualityError` if the model cannot reach it
    within 3 %: use `encode_at_bpp` to get the closest rate instead).
    """
    if bpp is not None:
      if quality is not None:
        raise QualityError("Give quality or bpp, not both.")
      result = self.encode_at_bpp(image, bpp)
      if not result.reachable:
        low, high = self.quality_range
        raise QualityError(
            f"Target {bpp} bpp is outside what this model reaches on this "
            f"image (qualities {low:g}-{high:g}): {result.describe()}.")
      return result.data
    quality = self.model.check_quality(quality)
    color, alpha, size = self._split(image)
    outputs = self.model.compress_image(
        color, quality if self.model.variable_rate else None)
    return self._pack(outputs, alpha, size, quality)

  def encode_at_bpp(self, image, bpp):
    """Rate control: the quality whose bitstream is closest to `bpp`.

    The analysis transform runs once; each try re-quantises and re-codes its
    output (the hyper-transforms and the range coder), by bisection on the
    quality, until the rate is within 3 % of the target. Returns a
    `RateControlResult`.
    """
    if not self.model.variable_rate:
      raise QualityError(f"The {self.model.architecture!r} model is fixed-rate: "
                         "rate control needs a variable-rate model.")
    target = float(bpp)
    if not target > 0:
      raise QualityError(f"Target bpp must be > 0, got {bpp}.")
    color, alpha, size = self._split(image)
    num_pixels = size[0] * size[1]
    y = self.model.analyze_image(color)
    shape = np.array(size[:2], np.int32)

    def code(q):
      q = self.model.check_quality(q)
      data = self._pack(self.model.compress_analyzed(y, shape, q), alpha, size, q)
      return q, data, 8.0 * len(data) / num_pixels

    low, high = code(self.quality_range[0]), code(self.quality_range[1])
    for end in (low, high):
      if abs(end[2] - target) <= BPP_TOLERANCE * target:
        return RateControlResult(end[1], end[0], end[2], target, True)
    if target < low[2]:
      return RateControlResult(low[1], low[0], low[2], target, False)
    if target > high[2]:
      return RateControlResult(high[1], high[0], high[2], target, False)
    best = min((low, high), key=lambda r: abs(r[2] - target))
    for _ in range(24):
      mid = code((low[0] + high[0]) / 2)
      if abs(mid[2] - target) < abs(best[2] - target):
        best = mid
      if abs(mid[2] - target) <= BPP_TOLERANCE * target:
        break
      if mid[2] < target:
        low = mid
      else:
        high = mid
    return RateControlResult(best[1], best[0], best[2], target,
                             abs(best[2] - target) <= BPP_TOLERANCE * target)

  def decode(self, data, max_pixels=container.DEFAULT_MAX_PIXELS, tile=None):
    """bytes -> uint8 [H, W, C]. Raises `container.BitstreamError`.

    `max_pixels`: refuse larger declared images (`ImageTooLargeError`); None
    for no limit. `tile`: images above ~2 Mpixel are synthesised in tiles,
    which bounds a decode's memory (README, "Decoder memory"); a tile side
    in pixels (multiple of 16) forces tiles, 0 decodes whole.
    """
    stream = container.unpack(data, max_pixels)
    self.check_stream(stream)
    if self.isolate:
      return self._decoder_process().decode(data, max_pixels=max_pixels)
    h = stream.header
    if self.model.variable_rate:
      try:
        quality = self.model.check_quality(h.quality)
      except QualityError as e:
        raise container.BitstreamError(f"Corrupt bitstream: {e}") from None
    elif h.quality != 0.0:
      raise container.BitstreamError(
          f"Corrupt bitstream: quality {h.quality} for a fixed-rate model.")
    else:
      quality = None
    import tensorflow as tf
    try:
      color = self.model.decompress_image(
          tf.constant([h.height, h.width], tf.int32),
          *[tf.constant(s) for s in stream.strings], quality=quality,
          **({} if tile is None else {"tile": tile})).numpy()
    except tf.errors.OpError as e:
      raise container.BitstreamError(
          f"Corrupt bitstream: range decoding failed ({e.message.splitlines()[0]})."
      ) from None
    if h.channels in (1, 2):
      gray = np.round(color.astype(np.float32).mean(-1, keepdims=True))
      color = gray.astype(np.uint8)
    if h.channels in (2, 4):
      try:
        plane = zlib.decompress(stream.alpha)
      except zlib.error as e:
        raise container.BitstreamError(f"Corrupt alpha plane: {e}.") from None
      if len(plane) != h.height * h.width:
        raise container.BitstreamError("Corrupt alpha plane: wrong size.")
      alpha = np.frombuffer(plane, np.uint8).reshape(h.height, h.width, 1)
      color = np.concatenate([color, alpha], axis=-1)
    return color

  def check_stream(self, stream):
    """Raises `BitstreamError` unless this model made the stream and its
    strings can hold the image its header declares."""
    self.check_compatible(stream.header)
    names = self.model.string_names
    if len(stream.strings) != len(names):
      raise container.BitstreamError(
          f"Corrupt bitstream: {len(stream.strings)} strings, the model codes "
          f"{len(names)}.")
    # Only Python models have the tables for the bound; an exported SavedModel
    # (`serving.SavedModelCodec`) goes straight to decoding.
    bounds = getattr(self.model, "min_string_bytes", None)
    if bounds is None:
      return
    h = stream.header
    for name, string, least in zip(names, stream.strings, bounds((h.height, h.width))):
      if len(string) < least:
        raise container.BitstreamError(
            f"Corrupt bitstream: string {name!r} has {len(string)} bytes, but "
            f"a {h.width}x{h.height} image needs at least {least} with this "
            "model; the declared size does not match the data (damaged or "
            "crafted to exhaust memory).")

  def _decoder_process(self):
    from dpc_tf import isolation  # pylint: disable=import-outside-toplevel
    if isinstance(self.isolate, isolation.DecoderProcess):
      return self.isolate
    if self.model_path is None:
      raise ValueError("isolate=True needs a codec loaded from a path "
                       "(dpc_tf.load_codec(path, isolate=True)).")
    self.isolate = isolation.DecoderProcess(self.model_path)
    return self.isolate

  def check_compatible(self, header):
    """Raises `ModelMismatchError` unless this model made the bitstream."""
    if (header.architecture, header.config_hash, header.fingerprint) != (
        self.model.architecture, self.config_hash, self.fingerprint):
      raise container.ModelMismatchError(
          f"The bitstream was made by model {header.model_id}, but the loaded "
          f"model is {self.model_id}. Decode it with the model that encoded it "
          "(`dpc info FILE` shows which).")
