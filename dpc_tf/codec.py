"""`Codec`: images to `.dpc` bytes and back, with any trained model.

    codec = dpc_tf.load_codec("runs/hyperprior")
    data = codec.encode(image)        # uint8 [H, W, C], C in 1-4
    assert codec.decode(data).shape == image.shape

Encoding is deterministic (the same image gives the same bytes) and decoding
gives the same pixels in any process on the same platform. Floating-point
differences between CPU types can change the entropy model's indexes, so move
bitstreams between machines of one kind (a known property of learned codecs).
"""

import zlib

import numpy as np

from dpc_tf import container, files, images, saving


class Codec:
  """Encodes and decodes images with a trained `CompressionModel`."""

  def __init__(self, model):
    if not model.is_frozen:
      model.update()
    self.model = model
    self.config_hash = bytes.fromhex(
        saving.config_hash(model.architecture, model.get_config()))
    self.fingerprint = bytes.fromhex(saving.fingerprint(model))

  @classmethod
  def load(cls, path):
    return cls(saving.load_model(path))

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

  def decode(self, data):
    """bytes -> uint8 [H, W, C]. Raises `container.BitstreamError`."""
    stream = container.unpack(data)
    self.check_compatible(stream.header)
    h = stream.header
    if len(stream.strings) != len(self.model.string_names):
      raise container.BitstreamError(
          f"Corrupt bitstream: {len(stream.strings)} strings, the model codes "
          f"{len(self.model.string_names)}.")
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

  def check_compatible(self, header):
    """Raises `ModelMismatchError` unless this model made the bitstream."""
    if (header.architecture, header.config_hash, header.fingerprint) != (
        self.model.architecture, self.config_hash, self.fingerprint):
      raise container.ModelMismatchError(
          f"The bitstream was made by model {header.model_id}, but the loaded "
          f"model is {self.model_id}. Decode it with the model that encoded it "
          "(`dpc info FILE` shows which).")


def load_codec(path):
  """A `Codec` for a model path: a model directory saved by `dpc_tf.save_model`,
  a dpc-train run directory (its `model/`), or a SavedModel exported by
  `dpc-export` (`<base>/<name>/<version>`, or `<base>/<name>` for its highest
  version). See `dpc_tf.files.resolve_model`."""
  kind, path = files.resolve_model(path)
  if kind == "saved_model":
    from dpc_tf import serving  # pylint: disable=import-outside-toplevel
    return serving.SavedModelCodec.load(path)
  return Codec.load(path)
