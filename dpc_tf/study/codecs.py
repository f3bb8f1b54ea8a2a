"""Codecs in a study: for each image and target rate, the setting whose
real file size is closest to the target without exceeding it.

- Classical codecs (`dpc_tf.evaluation.codecs`) are searched on a fine
  ladder spanning their default sweep: every integer quality, or 48
  geometric steps for a continuous setting (JPEG 2000's target rate, JPEG
  XL's distance). Rate grows monotonically along the ladder (its direction is
  measured, not assumed), so a bisection finds the setting in ~log2(ladder)
  encodes; of every setting it tried, the largest rate at or under the
  target wins, which also covers small non-monotonic steps.
- Learned codecs are given as model paths (`--model NAME=PATH[,PATH...]`).
  A single model that offers rate control -- `encode(image, bpp=target)`,
  which variable-rate `dpc_tf.Codec`s have -- is asked for the target and
  its result checked (asked again lower if it overshot). Otherwise the paths
  are a family of fixed-rate models, one per λ, and the quality sweep picks
  the best model under the target, as for a classical codec.

`StudyCodec.code(images, targets)` returns {(image id, target): Coded}.
"""

import dataclasses
import inspect

import numpy as np

# A rate-controlled model that overshoots is asked again for a slightly lower rate.
RATE_CONTROL_TRIES = 4
LADDER_STEPS = 48


@dataclasses.dataclass
class Coded:
  setting: str
  data: bytes
  bpp: float


class CannotReachError(ValueError):
  """A codec cannot code an image at or under a target rate."""


def bpp_of(data, image):
  height, width = image.shape[:2]
  return 8.0 * len(data) / (height * width)


def _progress(total, desc, enabled):
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit="image", disable=not enabled, leave=False,
              dynamic_ncols=True)


class StudyCodec:
  """Base: `name`, `description`, `method` (how settings are found)."""

  name = None
  description = ""
  method = ""

  def code(self, images, targets, progress=False):
    raise NotImplementedError

  def decode(self, coded):
    raise NotImplementedError

  def manifest_entry(self):
    return {"name": self.name, "description": self.description, "method": self.method}


class ClassicalStudyCodec(StudyCodec):
  """A classical `EvalCodec`, its setting found by bisection on a fine ladder."""

  def __init__(self, codec):
    reason = codec.unavailable_reason()
    if reason:
      raise ValueError(f"codec {codec.name!r} cannot run here: {reason}")
    self.codec = codec
    self.name = codec.name
    self.description = codec.describe()
    self.ladder = ladder(codec.settings)
    self.method = (f"bisection over {len(self.ladder)} {codec.setting_name} values "
                   f"{codec.setting_key(self.ladder[0])}..{codec.setting_key(self.ladder[-1])}")

  def code(self, images, targets, progress=False, floor=None):
    """floor: if the lowest rate exceeds a target, accept it when at most
    `floor[target]` (sentinels) instead of failing."""
    result, failures = {}, []
    with _progress(len(images), self.name, progress) as bar:
      for image_id, image in images.items():
        search = _Bisection(lambda s, image=image: self.codec.encode(image, s), self.ladder,
                            image)
        for target in targets:
          coded = search.best_under(target)
          if coded is None and floor is not None and search.lowest().bpp <= floor[target]:
            coded = search.lowest()
          if coded is None:
            failures.append(f"{image_id} at {target:g} bpp (its lowest rate is "
                            f"{search.lowest().bpp:.4f} bpp)")
          else:
            coded.setting = self.codec.setting_key(coded.setting)
            result[(image_id, target)] = coded
        bar.update()
    if failures and floor is None:
      raise CannotReachError(f"codec {self.name!r} cannot code {', '.join(failures)}; use a "
                             "higher --bpp or leave the codec out.")
    return result

  def decode(self, coded):
    return self.codec.decode(coded.data, None)


def ladder(settings):
  """Every integer between the sweep's ends, or geometric steps for floats."""
  low, high = min(settings), max(settings)
  if all(isinstance(s, int) for s in settings):
    return list(range(int(low), int(high) + 1))
  steps = np.geomspace(float(low), float(high), LADDER_STEPS)
  return sorted({float(f"{s:.4g}") for s in steps} | {float(s) for s in settings})


class _Bisection:
  """Finds settings of a ladder by their rate on one image, caching encodes."""

  def __init__(self, encode, settings, image):
    self.encode, self.image, self.cache = encode, image, {}
    # Orient the ladder so that the rate grows with the index.
    first, last = self._at_setting(settings[0]), self._at_setting(settings[-1])
    self.settings = list(settings) if first.bpp <= last.bpp else list(settings)[::-1]

  def _at_setting(self, setting):
    if setting not in self.cache:
      data = bytes(self.encode(setting))
      self.cache[setting] = Coded(setting, data, bpp_of(data, self.image))
    return self.cache[setting]

  def _at(self, index):
    return self._at_setting(self.settings[index])

  def lowest(self):
    return dataclasses.replace(self._at(0))

  def best_under(self, target):
    if self._at(0).bpp > target:
      return None
    low, high = 0, len(self.settings) - 1
    if self._at(high).bpp > target:
      while high - low > 1:
        middle = (low + high) // 2
        if self._at(middle).bpp <= target:
          low = middle
        else:
          high = middle
    under = [c for c in self.cache.values() if c.bpp <= target]
    return dataclasses.replace(max(under, key=lambda c: c.bpp))


def offers_rate_control(codec):
  """Whether a loaded codec can be asked for a rate: `supports_rate_control`
  when it says, else whether its `encode` takes a `bpp` argument."""
  flag = getattr(codec, "supports_rate_control", None)
  if flag is not None:
    return bool(flag() if callable(flag) else flag)
  try:
    return "bpp" in inspect.signature(codec.encode).parameters
  except (TypeError, ValueError):
    return False


class LearnedStudyCodec(StudyCodec):
  """Our models: rate control if the one model offers it, else a sweep over
  a family of fixed-rate models (one per path).

  Args:
    name: the codec's name in the study.
    paths: model paths (anything `loader` opens).
    loader: path -> object with `encode(uint8 image[, bpp=])` and `decode`;
      default `dpc_tf.load_codec`.
  """

  def __init__(self, name, paths, loader=None):
    if not paths:
      raise ValueError(f"learned codec {name!r} needs at least one model path.")
    self.name = name
    self.paths = [str(p) for p in paths]
    self._loader = loader
    self._loaded = {}
    models = [self._load(p) for p in self.paths]
    controlled = [offers_rate_control(m) for m in models]
    if any(controlled) and len(self.paths) > 1:
      raise ValueError(
          f"learned codec {name!r}: {sum(controlled)} of its {len(self.paths)} models offer "
          "rate control; give a variable-rate model alone (--model NAME=PATH), or only "
          "fixed-rate models as a family.")
    self.rate_control = controlled[0]
    if self.rate_control:
      self.method = "rate control: encode(image, bpp=target), checked and retried under target"
      self.description = f"learned codec {self.paths[0]} (variable rate)"
    else:
      self.method = f"best of {len(self.paths)} fixed-rate model(s) under the target"
      self.description = f"learned codec family of {len(self.paths)} model(s)"

  def _load(self, path):
    if path not in self._loaded:
      if self._loader is not None:
        self._loaded[path] = self._loader(path)
      else:
        import os
        if not os.path.exists(path):
          raise ValueError(f"model path {path!r} of codec {self.name!r} does not exist.")
        import dpc_tf
        self._loaded[path] = dpc_tf.load_codec(path)
    return self._loaded[path]

  def code(self, images, targets, progress=False):
    if self.rate_control:
      return self._code_rate_control(images, targets, progress)
    return self._code_sweep(images, targets, progress)

  def _code_rate_control(self, images, targets, progress):
    model = self._load(self.paths[0])
    result = {}
    with _progress(len(images), self.name, progress) as bar:
      for image_id, image in images.items():
        for target in targets:
          request = target
          for _ in range(RATE_CONTROL_TRIES):
            data = bytes(model.encode(image, bpp=request))
            achieved = bpp_of(data, image)
            if achieved <= target:
              break
            # Ask again in proportion to the overshoot, a little lower.
            request *= 0.99 * target / achieved
          else:
            raise CannotReachError(
                f"codec {self.name!r}: rate control gave {achieved:.4f} bpp for a target of "
                f"{target:g} on {image_id}, even when asked for {request:.4f}; the model's "
                "rate range may not reach that low.")
          result[(image_id, target)] = Coded(f"{self.paths[0]}@bpp={request:.6g}", data,
                                             achieved)
        bar.update()
    return result

  def _code_sweep(self, images, targets, progress):
    # Model-major: each model is loaded once and codes every image.
    coded = {}
    with _progress(len(images) * len(self.paths), self.name, progress) as bar:
      for path in self.paths:
        model = self._load(path)
        for image_id, image in images.items():
          data = bytes(model.encode(np.ascontiguousarray(image)))
          coded[(image_id, path)] = Coded(path, data, bpp_of(data, image))
          bar.update()
    result, failures = {}, []
    for image_id in images:
      options = [coded[(image_id, p)] for p in self.paths]
      for target in targets:
        under = [c for c in options if c.bpp <= target]
        if not under:
          failures.append(f"{image_id} at {target:g} bpp (its lowest rate is "
                          f"{min(c.bpp for c in options):.4f} bpp)")
          continue
        result[(image_id, target)] = max(under, key=lambda c: c.bpp)
    if failures:
      raise CannotReachError(f"codec {self.name!r}: no model codes {', '.join(failures)}; add "
                             "a lower-rate model or use a higher --bpp.")
    return result

  def decode(self, coded):
    path = self.paths[0] if self.rate_control else coded.setting
    return np.asarray(self._load(path).decode(coded.data))


def build(codec_names, model_args):
  """Study codecs from `--codecs` names and `--model NAME=PATH[,PATH...]`."""
  from dpc_tf.evaluation import codecs as classical
  from dpc_tf.evaluation.cli import _split_assignment
  result = [ClassicalStudyCodec(classical.get_codec(n)) for n in codec_names]
  for text in model_args:
    name, paths = _split_assignment(text, "--model")
    if name in [c.name for c in result]:
      raise ValueError(f"--model name {name!r} is already used by another codec.")
    result.append(LearnedStudyCodec(name, paths))
  return result
