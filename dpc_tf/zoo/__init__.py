"""Trained codecs shipped with dpc_tf, as CompressAI's model zoo.

    import dpc_tf
    dpc_tf.zoo.list_models()               # ['dpc', 'mse', 'msssim']
    codec = dpc_tf.zoo.load_codec("dpc")   # the default of `dpc compress`
    data = codec.encode(image, quality=3)  # or bpp=0.3
    dpc_tf.zoo.model_card("dpc")           # how it was trained and measured

Each entry is a variable-rate model (one model for every rate: `quality`
from 1 to the number of its trained λ) in `dpc_tf/zoo/models/<name>/`:
`model.json` and `weights.npz` (float16 weights; see `saving`), and
`card.json`, its model card: architecture, training distortion and data, λ
per quality, steps and CPU-hours, the learning curve, Kodak results at each
quality and BD-rates against classical codecs, and the fingerprint. Loading
checks the fingerprint, so a damaged or mismatched file is refused.
"""

import json
import os

DEFAULT = "dpc"
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
CARD_FILE = "card.json"


class ZooError(ValueError):
  """An unknown zoo name, or a zoo entry that is missing or damaged."""


def list_models():
  """Names of the shipped models (those with weights and a model card)."""
  if not os.path.isdir(MODELS_DIR):
    return []
  return sorted(name for name in os.listdir(MODELS_DIR)
                if os.path.isfile(os.path.join(MODELS_DIR, name, CARD_FILE))
                and os.path.isfile(os.path.join(MODELS_DIR, name, "model.json")))


def model_dir(name):
  """The directory of zoo model `name`; `ZooError` if there is none."""
  names = list_models()
  if name not in names:
    raise ZooError(f"No zoo model {name!r}; the zoo has "
                   f"{', '.join(names) if names else 'no models'}.")
  return os.path.join(MODELS_DIR, name)


def model_card(name):
  """The model card of zoo model `name` (a dict; see the module doc)."""
  return read_card(os.path.join(model_dir(name), CARD_FILE))


def read_card(path):
  """The model card in file `path`; `ZooError` naming it if unreadable."""
  try:
    with open(path) as f:
      card = json.load(f)
  except (OSError, ValueError) as e:
    raise ZooError(f"The model card {path} is unreadable: {e}") from None
  if not isinstance(card, dict):
    raise ZooError(f"The model card {path} is not a JSON object.")
  return card


def load_model(name):
  """The zoo model `name` as a `CompressionModel` (fingerprint checked)."""
  from dpc_tf import saving  # pylint: disable=import-outside-toplevel
  directory = model_dir(name)
  try:
    model = saving.load_model(directory)
  except saving.ModelFileError as e:
    raise ZooError(f"The zoo model {name!r} is damaged ({e}); reinstall "
                   "dpc_tf.") from None
  card = model_card(name)
  if card.get("fingerprint") != saving.fingerprint(model):
    raise ZooError(f"The zoo model {name!r} does not match its model card "
                   f"(fingerprint {saving.fingerprint(model)} vs "
                   f"{card.get('fingerprint')}); reinstall dpc_tf.")
  return model


def load_codec(name=DEFAULT):
  """A `dpc_tf.Codec` for zoo model `name` (default: "dpc")."""
  from dpc_tf import codec  # pylint: disable=import-outside-toplevel
  return codec.Codec(load_model(name))
