"""`Codec`: images to `.dpc` bytes and back, with any trained model.

    codec = dpc_tf.load_codec("runs/hyperprior")
    data = codec.encode(image)        # uint8 [H, W, C], C in 1-4
    assert codec.decode(data).shape == image.shape

Encoding is deterministic (the same image gives the same bytes) and decoding
gives the same pixels in any process on the same platform. Floating-point
differences between CPU types can change the entropy model's indexes, so move
bitstreams between machines of one kind (a known property of learned codecs).

Untrusted input: `decode` refuses headers above `max_pixels` (default twice
Pillow's bomb limit) and strings too short for the declared size, but a
crafted string can still hang tfc's range decoder forever (see
`dpc_tf.isolation`); `load_codec(path, isolate=True)` decodes in a worker
process with a time budget instead.
"""

import os
import zlib

import numpy as np

from dpc_tf import container, images, saving


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

  def encode(self, image):
    """uint8 [H, W, C] -> bytes of a `.dpc` bitstream."""
    image = images.check_image(image)
    height, width, channels = image.shape
    color = image[..., :3] if channels >= 3 else np.repeat(image[..., :1], 3, -1)
    alpha = b""
    if channels in (2, 4):
      alpha = zlib.compress(np.ascontiguousarray(image[..., -1]).tobytes(), 9)
    outputs = self.model.compress_image(color)
    strings = tuple(outputs[name].numpy() for name in self.model.string_names)
    header = container.Header(self.model.architecture, self.config_hash,
                              self.fingerprint, height, width, channels)
    return container.pack(container.Bitstream(header, strings, alpha))

  def decode(self, data, max_pixels=container.DEFAULT_MAX_PIXELS):
    """bytes -> uint8 [H, W, C]. Raises `container.BitstreamError`.

    `max_pixels`: refuse larger declared images (`ImageTooLargeError`); None
    for no limit. Decoding takes ~1.8 kB of memory per pixel with a
    192-filter hyperprior (README, "Decoder memory"): set the limit from the
    memory a decode may have.
    """
    stream = container.unpack(data, max_pixels)
    self.check_stream(stream)
    if self.isolate:
      return self._decoder_process().decode(data, max_pixels=max_pixels)
    h = stream.header
    import tensorflow as tf
    try:
      color = self.model.decompress_image(
          tf.constant([h.height, h.width], tf.int32),
          *[tf.constant(s) for s in stream.strings]).numpy()
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


def load_codec(path, isolate=False):
  """A `Codec` for a model directory saved by `dpc_tf.save_model`, or for a
  SavedModel exported by `dpc-export` (`<base>/<name>/<version>`, or
  `<base>/<name>` for its highest version).

  `isolate=True`: `decode` runs in a worker process with a time budget
  (`dpc_tf.isolation.DecoderProcess`), for bitstreams from untrusted sources.
  """
  from dpc_tf import serving  # pylint: disable=import-outside-toplevel
  if serving.is_saved_model(path):
    codec = serving.SavedModelCodec.load(path)
  else:
    codec = Codec.load(path)
  codec.model_path = os.fspath(path)
  codec.isolate = isolate
  return codec
