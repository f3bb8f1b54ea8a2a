"""A registry of named codec architectures, as CompressAI's zoo."""

import logging

import tensorflow as tf

_MODELS = {}

# Old registry names -> current ones. Model files, SavedModels and bitstreams
# record the architecture's name, and it is hashed into their config hash and
# fingerprint, so a model built under an old name keeps it (see `create_model`).
ALIASES = {
    # Minnen & Singh 2020's channel-wise context, which is not the spatial
    # "joint autoregressive" model of Minnen et al. 2018.
    "joint": "channelwise",
}
_warned = set()


def register_model(name):
  """Class decorator: registers a `CompressionModel` subclass under `name`."""

  def wrap(cls):
    if name in _MODELS or name in ALIASES:
      raise ValueError(f"Model {name!r} is registered twice.")
    cls.architecture = name
    _MODELS[name] = cls
    return tf.keras.utils.register_keras_serializable(package="dpc_tf")(cls)

  return wrap


def available_models():
  return sorted(_MODELS)


def model_class(name):
  """The class registered as `name`, or under the current name of an old one."""
  if name in ALIASES:
    if name not in _warned:
      _warned.add(name)
      logging.getLogger("dpc_tf").warning(
          "Architecture %r is deprecated: it is now called %r. Models saved "
          "under the old name still load, and keep it so that their "
          "fingerprints and bitstreams stay the same.", name, ALIASES[name])
    name = ALIASES[name]
  try:
    return _MODELS[name]
  except KeyError:
    raise ValueError(f"Unknown architecture {name!r}; choose one of "
                     f"{', '.join(available_models())}.") from None


def create_model(name, **hparams):
  """Builds the architecture registered as `name` with its hyper-parameters.

  An old name (`ALIASES`) builds the current class, but the model keeps the
  old name as its `architecture`: the name is part of its config hash and
  fingerprint, so files and bitstreams made under it stay valid.
  """
  cls = model_class(name)
  try:
    model = cls(**hparams)
  except TypeError as e:
    raise ValueError(f"Bad hyper-parameters for {name!r}: {e}") from None
  if name != cls.architecture:
    model.architecture = name
  return model
