"""A registry of named codec architectures, as CompressAI's zoo."""

import tensorflow as tf

_MODELS = {}


def register_model(name):
  """Class decorator: registers a `CompressionModel` subclass under `name`."""

  def wrap(cls):
    if name in _MODELS:
      raise ValueError(f"Model {name!r} is registered twice.")
    cls.architecture = name
    _MODELS[name] = cls
    return tf.keras.utils.register_keras_serializable(package="dpc_tf")(cls)

  return wrap


def available_models():
  return sorted(_MODELS)


def model_class(name):
  try:
    return _MODELS[name]
  except KeyError:
    raise ValueError(f"Unknown architecture {name!r}; choose one of "
                     f"{', '.join(available_models())}.") from None


def create_model(name, **hparams):
  """Builds the architecture registered as `name` with its hyper-parameters."""
  cls = model_class(name)
  try:
    return cls(**hparams)
  except TypeError as e:
    raise ValueError(f"Bad hyper-parameters for {name!r}: {e}") from None
