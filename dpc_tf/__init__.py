"""dpc-tf: learned image codecs for Deep Perceptual Compression.

    import dpc_tf
    model = dpc_tf.create_model("hyperprior", num_filters=128)
    model.compile(optimizer="adam", distortion="msssim", lmbda=0.01)
    model.fit(dataset, ...)          # freezes coding tables at the end
    dpc_tf.save_model(model, "runs/hp")
    codec = dpc_tf.load_codec("runs/hp")
    data = codec.encode(image)       # uint8 [H, W, C] numpy -> bytes
    image = codec.decode(data)

Names and submodules are imported on first use, so tools that only read
bitstreams (`dpc info`) start without loading TensorFlow, and `import dpc_tf`
is enough for `dpc_tf.serving.export(...)`, `dpc_tf.data.crops_dataset_fn(...)`.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "layers": ("dpc_tf.layers", None),
    "CompressionModel": ("dpc_tf.models", "CompressionModel"),
    "FactorizedCodec": ("dpc_tf.models", "FactorizedCodec"),
    "HyperpriorCodec": ("dpc_tf.models", "HyperpriorCodec"),
    "MeanScaleHyperpriorCodec": ("dpc_tf.models", "MeanScaleHyperpriorCodec"),
    "ChannelwiseContextCodec": ("dpc_tf.models", "ChannelwiseContextCodec"),
    "available_models": ("dpc_tf.models", "available_models"),
    "create_model": ("dpc_tf.models", "create_model"),
    "register_model": ("dpc_tf.models", "register_model"),
    "Codec": ("dpc_tf.codec", "Codec"),
    "load_codec": ("dpc_tf.loading", "load_codec"),
    "BitstreamError": ("dpc_tf.container", "BitstreamError"),
    "ModelMismatchError": ("dpc_tf.container", "ModelMismatchError"),
    "QualityError": ("dpc_tf.container", "QualityError"),
    "RateControlResult": ("dpc_tf.codec", "RateControlResult"),
    "zoo": ("dpc_tf.zoo", None),
    "ImageTooLargeError": ("dpc_tf.container", "ImageTooLargeError"),
    "DecodeTimeoutError": ("dpc_tf.isolation", "DecodeTimeoutError"),
    "DecoderProcess": ("dpc_tf.isolation", "DecoderProcess"),
    "ImageError": ("dpc_tf.images", "ImageError"),
    "read_image": ("dpc_tf.images", "read_image"),
    "write_image": ("dpc_tf.images", "write_image"),
    "ModelFileError": ("dpc_tf.saving", "ModelFileError"),
    "load_model": ("dpc_tf.saving", "load_model"),
    "save_model": ("dpc_tf.saving", "save_model"),
}

# Submodules reachable as attributes (`dpc_tf.serving`), imported on first use.
_SUBMODULES = ("codec", "container", "data", "evaluation", "files", "images",
               "layers", "loading", "metrics", "models", "saving", "serving",
               "training")

__all__ = sorted(set(_EXPORTS) | set(_SUBMODULES))


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"dpc_tf.{name}")
  try:
    module, attribute = _EXPORTS[name]
  except KeyError:
    raise AttributeError(f"module 'dpc_tf' has no attribute {name!r}") from None
  value = importlib.import_module(module)
  if attribute:
    value = getattr(value, attribute)
  globals()[name] = value
  return value


def __dir__():
  return __all__
