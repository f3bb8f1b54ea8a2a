"""The `.dpc` bitstream container, format version 2.

All integers are big-endian; `varint` is unsigned LEB128.

    offset  size     field
    0       4        magic b"\\x89DPC" (a high first byte, as PNG, so text
                     transfers that mangle bytes are caught)
    4       1        format version (2; version 1 files, which have no
                     quality field, are still read)
    5       1+n      architecture name: u8 length n, ASCII
    .       4        config hash: first 4 bytes of SHA-256 of the
                     hyper-parameters (see `saving.config_hash`)
    .       8        weights fingerprint (see `saving.fingerprint`)
    .       4+4+1    image height, width (u32), channels (u8): 1 gray,
                     2 gray+alpha, 3 RGB, 4 RGBA
    .       4        quality (float32; 0 for a fixed-rate model): the
                     decoder must apply the same gains as the encoder
    .       1        number of entropy-coded strings k
    .       k times  varint length + the string (model order, e.g. z, y)
    .       [varint length + zlib-compressed alpha plane]  if channels is 2 or 4
    end-4   4        CRC-32 of every byte before it

Colour: gray images are coded as RGB with three equal channels and decoded to
the mean of the three; alpha is kept losslessly (zlib), beside the codec.
The header costs about 40 bytes, under 0.001 bpp on a Kodak image.
"""

import dataclasses
import struct
import zlib

MAGIC = b"\x89DPC"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
# Decompression-bomb guard, as Pillow's: Image.MAX_IMAGE_PIXELS (89 478 485,
# a quarter GiB of RGB) is where Pillow warns and twice that where it refuses;
# we refuse above twice that by default. `unpack(max_pixels=)`,
# `Codec.decode(max_pixels=)` and `dpc decompress --max-pixels` raise it.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485
DEFAULT_MAX_PIXELS = 2 * PILLOW_MAX_IMAGE_PIXELS


class BitstreamError(ValueError):
  """The data is not a valid `.dpc` bitstream this version can decode."""


class ModelMismatchError(BitstreamError):
  """The bitstream was made by a different model than the one given."""


class ImageTooLargeError(BitstreamError):
  """The header declares more pixels than the caller's limit allows."""


class QualityError(ValueError):
  """A quality or target rate the model cannot code at (names the valid range)."""


def check_quality(architecture, lmbdas, quality):
  """The float32 quality a model of these `lmbdas` codes (0.0 if fixed-rate).

  `lmbdas`: a variable-rate model's trained λ (its qualities are 1..N), or
  None. Raises `QualityError` naming the value and the valid range. The value
  is rounded to float32 because the bitstream stores it so: the decoder must
  use exactly the encoder's gains. Python models and SavedModels share it, so
  both refuse the same qualities.
  """
  if not lmbdas:
    if quality is not None:
      raise QualityError(
          f"The {architecture!r} model is fixed-rate: it codes at one "
          f"rate, so quality={quality} cannot be used. Train a variable-rate "
          "model (dpc-train --lmbdas=...) or use a zoo model.")
    return 0.0
  low, high = 1.0, float(len(lmbdas))
  if quality is None:
    raise QualityError(f"This variable-rate model needs a quality in "
                       f"[{low:g}, {high:g}] (or a target bpp).")
  q = struct.unpack("<f", struct.pack("<f", float(quality)))[0]
  if not low <= q <= high:
    raise QualityError(f"quality {quality} is outside this model's trained "
                       f"range [{low:g}, {high:g}].")
  return q


@dataclasses.dataclass(frozen=True)
class Header:
  architecture: str
  config_hash: bytes   # 4 bytes
  fingerprint: bytes   # 8 bytes
  height: int
  width: int
  channels: int
  quality: float = 0.0  # Variable-rate models; 0.0 for fixed-rate ones.

  @property
  def model_id(self):
    return f"{self.architecture}/{self.config_hash.hex()}/{self.fingerprint.hex()}"


@dataclasses.dataclass(frozen=True)
class Bitstream:
  header: Header
  strings: tuple
  alpha: bytes = b""   # zlib-compressed alpha plane, if any


def _varint(n):
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def pack(stream):
  """Bitstream -> bytes."""
  h = stream.header
  name = h.architecture.encode("ascii")
  if len(name) > 255:
    raise ValueError("Architecture name longer than 255 bytes.")
  if len(h.config_hash) != 4 or len(h.fingerprint) != 8:
    raise ValueError("config_hash must be 4 bytes and fingerprint 8 bytes.")
  if h.channels not in (1, 2, 3, 4):
    raise ValueError(f"channels must be 1-4, got {h.channels}.")
  if len(stream.strings) > 255:
    raise ValueError("At most 255 strings.")
  out = bytearray(MAGIC)
  out += bytes([FORMAT_VERSION, len(name)]) + name
  out += h.config_hash + h.fingerprint
  out += struct.pack(">IIBf", h.height, h.width, h.channels, h.quality)
  out.append(len(stream.strings))
  for s in stream.strings:
    out += _varint(len(s)) + s
  if h.channels in (2, 4):
    out += _varint(len(stream.alpha)) + stream.alpha
  out += struct.pack(">I", zlib.crc32(out))
  return bytes(out)


class _Reader:

  def __init__(self, data):
    self.data = data
    self.pos = 0

  def take(self, n, what):
    if self.pos + n > len(self.data) - 4:  # The last 4 bytes are the CRC.
      raise BitstreamError(
          f"Truncated or corrupt bitstream: {what} needs {n} bytes at offset {self.pos}, "
          f"but the data ends at {len(self.data) - 4} (before the checksum).")
    chunk = self.data[self.pos:self.pos + n]
    self.pos += n
    return chunk

  def varint(self, what):
    n = shift = 0
    while True:
      byte = self.take(1, what)[0]
      n |= (byte & 0x7F) << shift
      shift += 7
      if not byte & 0x80:
        return n
      if shift > 35:
        raise BitstreamError(f"Corrupt bitstream: bad length field for {what}.")


def unpack(data, max_pixels=DEFAULT_MAX_PIXELS):
  """bytes -> Bitstream. Raises `BitstreamError` naming what is wrong.

  `max_pixels`: refuse (`ImageTooLargeError`) a header declaring more pixels
  than this; None for no limit (only for files you trust).
  """
  data = bytes(data)
  if len(data) < 5 or data[:4] != MAGIC:
    raise BitstreamError(
        "Not a dpc bitstream (wrong magic bytes); expected a file written by "
        "`dpc compress` or dpc_tf.Codec.encode.")
  version = data[4]
  if version not in READ_VERSIONS:
    raise BitstreamError(
        f"Bitstream format version {version} is not supported; this dpc_tf "
        f"reads versions {', '.join(map(str, READ_VERSIONS))}"
        + (": a newer dpc_tf wrote it, upgrade to read it." if version > FORMAT_VERSION
           else "."))
  r = _Reader(data)
  r.pos = 5
  name_len = r.take(1, "architecture name length")[0]
  try:
    architecture = r.take(name_len, "architecture name").decode("ascii")
  except UnicodeDecodeError:
    raise BitstreamError("Corrupt bitstream: architecture name is not ASCII.") from None
  config_hash = r.take(4, "config hash")
  fingerprint = r.take(8, "fingerprint")
  height, width, channels = struct.unpack(">IIB", r.take(9, "image size"))
  quality = 0.0
  if version >= 2:
    quality, = struct.unpack(">f", r.take(4, "quality"))
  count = r.take(1, "string count")[0]
  strings = tuple(r.take(r.varint("string length"), f"string {i}")
                  for i in range(count))
  alpha = b""
  if channels in (2, 4):
    alpha = r.take(r.varint("alpha length"), "alpha plane")
  if r.pos != len(data) - 4:
    raise BitstreamError(
        f"Corrupt bitstream: {len(data) - 4 - r.pos} unexpected bytes before "
        "the checksum.")
  crc, = struct.unpack(">I", data[-4:])
  if zlib.crc32(data[:-4]) != crc:
    raise BitstreamError("Corrupt bitstream: checksum mismatch (the file was "
                         "damaged after it was written).")
  if channels not in (1, 2, 3, 4):
    raise BitstreamError(f"Corrupt bitstream: {channels} channels.")
  if not height or not width:
    raise BitstreamError(f"Corrupt bitstream: image size {width}x{height}.")
  check_pixels(height, width, max_pixels)
  if not (quality == 0.0 or 1.0 <= quality < 256.0):  # Also refuses NaN.
    raise BitstreamError(f"Corrupt bitstream: quality {quality}.")
  header = Header(architecture, config_hash, fingerprint, height, width,
                  channels, quality)
  return Bitstream(header, strings, alpha)


def check_pixels(height, width, max_pixels):
  """Raises `ImageTooLargeError` if height x width exceeds max_pixels (None: no limit)."""
  if max_pixels is not None and height * width > max_pixels:
    raise ImageTooLargeError(
        f"The bitstream declares a {width}x{height} image ({height * width:,} "
        f"pixels), above the limit of {max_pixels:,} pixels that guards against "
        "decompression bombs (as Pillow's). If you trust the file, raise the "
        "limit: `dpc decompress --max-pixels N` or Codec.decode(data, "
        "max_pixels=N).")
