"""`CompressionModel`: what every codec architecture shares.

A model is a Keras `Model` whose `call(x, training)` returns the reconstruction
and the estimated bits of each image. Training minimises, per image,

    bpp + λ · distortion(x, x_hat)

as tfc and CompressAI write it (MSE on the 0-255 scale, so their published λ
mean the same here; see `perceptual.Distortion.lmbda_scale`), averaged over the
global batch, so `tf.distribute` (which sums gradients over replicas) applies
the same update as one device with the same global batch.

Variable rate: a model built with `lmbdas=(λ_1, ..., λ_N)` learns per-channel
gain vectors on its latents and hyper-latents for each λ (Cui et al. 2021,
`layers.ChannelGains`) and trains with a λ drawn per image. It then codes at
any `quality` in [1, N]: quality i is λ_i, and qualities in between
interpolate the gains, so one model covers the whole rate range.

Before compressing, `update()` freezes the range-coding tables from the trained
priors (CompressAI's `update()`); they are saved with the weights, because
computing them again takes seconds.

Subclasses implement `_forward`, `_compress_latents`, `_decode_latents` and
`_latents` (each takes the rate `level`, and applies `_gain_*`/`_ungain_*` to
what it entropy-codes), `_layer_input_channels`, `_priors` and `get_config`,
and name their entropy-coded strings in `string_names`.
"""

import math

import numpy as np

import tensorflow as tf
import tensorflow_compression as tfc

import perceptual
from dpc_tf import container
from dpc_tf import layers
from dpc_tf.container import QualityError

QUANTIZATION_PROXIES = ("ste", "noise")


def _check_lmbdas(lmbdas):
  if lmbdas is None:
    return None
  lmbdas = tuple(float(l) for l in lmbdas)
  if len(lmbdas) < 2 or any(not l > 0 for l in lmbdas) or list(lmbdas) != sorted(
      set(lmbdas)):
    raise ValueError("lmbdas of a variable-rate model must be at least two "
                     f"distinct positive values in increasing order; got {lmbdas}.")
  return lmbdas


class CompressionModel(tf.keras.Model):
  """Base class of the registered codec architectures."""

  architecture = None  # The registry name, set by `register_model`.
  # Images are padded to a multiple of this (the coarsest latent's stride).
  stride = 16

  # Decoding in tiles: the synthesis transform's activations (192 channels at
  # half resolution: most of a decode's ~1.8 kB per pixel) grow with the
  # image, the latents only 1/16 as fast in each direction. Above
  # `tile_above_pixels` (padded), the latents are entropy-decoded whole and
  # synthesised in tiles of `tile_size` pixels plus `synthesis_margin`
  # latents on each side, then cropped and stitched. A pixel depends on
  # latents within 1 + 1/2 + 1/4 + 1/8 < 2 of its own (four 5x5 stride-2
  # transposed convolutions, each reaching 2 samples = 1 input each way), so
  # a margin of 2 gives the whole decode's pixels exactly (tests/test_codec.py;
  # a margin of 1 is off by up to 255 levels). The extra synthesis work is
  # (1 + 4/32)^2 - 1 = 27% at 512-pixel tiles.
  tile_size = 512
  tile_above_pixels = 1 << 21  # 1080p (1920x1088 padded) decodes whole.
  synthesis_margin = 2

  # The compression graphs trace without AutoGraph: converting tfc's and
  # Keras' code with it was most of the time tracing took (a first encode
  # 3.8x as long with it: bench/bench_startup.py). Their code is plain TensorFlow ops; a subclass whose
  # compression code branches on tensors in Python sets this to True.
  autograph = False

  def __init__(self, num_scales=64, scale_min=0.11, scale_max=256.0,
               lmbdas=None, name=None, **kwargs):
    super().__init__(name=name or self.architecture, **kwargs)
    self.num_scales = int(num_scales)
    self.scale_min = float(scale_min)
    self.scale_max = float(scale_max)
    self.lmbdas = _check_lmbdas(lmbdas)
    self.lmbda = None
    self.distortion = None
    self.quantization_proxy = "ste"
    self._frozen = None

  def _build_weights(self):
    """Creates every variable from known channel counts, without a forward pass.

    Keras' `build()` and a forward pass on a dummy image both cost seconds for
    a large model, which `dpc` would pay at each start.
    """
    channels = self._layer_input_channels()
    if self.variable_rate:
      channels += self._make_gains()
    for layer, depth in channels:
      # In the layer's name scope, as Keras's __call__ would build it: unique
      # variable names (analysis/conv_0/kernel_real), which `init_weights`
      # matches on.
      with tf.name_scope(layer.name):
        layer.build(tf.TensorShape([None, None, None, depth]))
    self.built = True

  def _layer_input_channels(self):
    """[(layer, input channels)] for every transform of the model."""
    raise NotImplementedError

  # -- Configuration ---------------------------------------------------------

  def get_config(self):
    config = dict(num_scales=self.num_scales, scale_min=self.scale_min,
                  scale_max=self.scale_max)
    if self.variable_rate:
      config["lmbdas"] = list(self.lmbdas)
    return config

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  @property
  def string_names(self):
    """Names of the entropy-coded strings, in the order `_compress_latents` returns."""
    raise NotImplementedError

  def _scale_fn(self, index):
    # Log-uniform table of scales, as in tfc's models.
    offset = math.log(self.scale_min)
    factor = (math.log(self.scale_max) - offset) / (self.num_scales - 1.0)
    return tf.math.exp(offset + factor * index)

  def _batched_entropy_model(self, prior, compression=False):
    # offset_heuristic=False: quantisation is plain rounding, which keeps the
    # core-op latent path (`image_latents`) free of the prior.
    return tfc.ContinuousBatchedEntropyModel(
        prior, coding_rank=3, compression=compression, offset_heuristic=False)

  def _indexed_entropy_model(self, compression=False):
    return tfc.LocationScaleIndexedEntropyModel(
        tfc.NoisyNormal, self.num_scales, self._scale_fn, coding_rank=3,
        compression=compression)

  # -- Variable rate ---------------------------------------------------------

  @property
  def variable_rate(self):
    return self.lmbdas is not None

  @property
  def quality_range(self):
    """(lowest, highest) quality of a variable-rate model; None if fixed-rate."""
    return (1.0, float(len(self.lmbdas))) if self.variable_rate else None

  @property
  def default_quality(self):
    """The quality used when none is given: the middle of the range."""
    if not self.variable_rate:
      return None
    return (1.0 + len(self.lmbdas)) / 2

  def _make_gains(self):
    """Creates the gain layers; returns [(layer, channels)] to build."""
    # Start from gains a pre-trained fixed-rate model would want: for MSE the
    # best quantisation step scales as 1/sqrt(λ), so gain ∝ sqrt(λ) around
    # the middle λ. Training then refines every channel.
    middle = math.sqrt(self.lmbdas[0] * self.lmbdas[-1])
    start = [0.5 * math.log(l / middle) for l in self.lmbdas]
    n = len(self.lmbdas)
    self.latent_gains = layers.ChannelGains(n, start, name="latent_gains")
    self.latent_inverse_gains = layers.ChannelGains(
        n, [-g for g in start], name="latent_inverse_gains")
    built = [(self.latent_gains, self.latent_depth),
             (self.latent_inverse_gains, self.latent_depth)]
    if getattr(self, "hyperprior_depth", None):
      self.hyper_gains = layers.ChannelGains(n, name="hyper_gains")
      self.hyper_inverse_gains = layers.ChannelGains(n, name="hyper_inverse_gains")
      built += [(self.hyper_gains, self.hyperprior_depth),
                (self.hyper_inverse_gains, self.hyperprior_depth)]
    return built

  def _gain_latents(self, y, level):
    return self.latent_gains(y, level) if self.variable_rate else y

  def _ungain_latents(self, y_hat, level):
    return self.latent_inverse_gains(y_hat, level) if self.variable_rate else y_hat

  def _gain_hyper_latents(self, z, level):
    return self.hyper_gains(z, level) if self.variable_rate else z

  def _ungain_hyper_latents(self, z_hat, level):
    return self.hyper_inverse_gains(z_hat, level) if self.variable_rate else z_hat

  def _hyper_latents(self, y, level):
    """Hyper-latents z of (gained) latents y, gained: models with a hyperprior."""
    return self._gain_hyper_latents(self.hyper_analysis_transform(y), level)

  def check_quality(self, quality):
    """The float32 quality that will be coded (or 0.0 for fixed-rate models).

    Raises `QualityError` naming the value and the valid range
    (`dpc_tf.container.check_quality`).
    """
    return container.check_quality(self.architecture, self.lmbdas, quality)

  def _level(self, quality):
    """Quality tensor -> rate level (0-based), or None for fixed-rate models."""
    if isinstance(quality, (int, float, np.floating, np.integer)) or quality is None:
      # A Python value: refuse it here with the valid range named.
      quality = self.check_quality(quality)
    if not self.variable_rate:
      return None
    quality = tf.convert_to_tensor(quality, tf.float32)
    low, high = self.quality_range
    checks = [tf.debugging.assert_greater_equal(
                  quality, low, message="quality below the trained range"),
              tf.debugging.assert_less_equal(
                  quality, high, message="quality above the trained range")]
    with tf.control_dependencies(checks):
      return quality - 1.0

  def lmbda_at(self, quality):
    """λ a variable-rate model was trained for at `quality` (interpolated)."""
    level = self.check_quality(quality) - 1.0
    i = min(int(math.floor(level)), len(self.lmbdas) - 2)
    t = level - i
    return math.exp((1 - t) * math.log(self.lmbdas[i]) +
                    t * math.log(self.lmbdas[i + 1]))

  # -- Range-coding tables ---------------------------------------------------

  def _priors(self):
    """{name: prior} of the factorized entropy models (tables are trained)."""
    raise NotImplementedError

  def _uses_indexed_model(self):
    return False

  def update(self):
    """Freezes the range-coding tables from the current weights.

    Call after training (`fit` does) and before compressing. Idempotent: it
    rebuilds the tables each time, so call it again after more training.
    """
    self._set_frozen({name: self._frozen_batched_model(prior)
                      for name, prior in self._priors().items()})

  def _frozen_batched_model(self, prior):
    # tfc estimates the prior's tails with a loop of small ops: ~15 s eagerly
    # for a tiny model, ~1 s as a graph. So build the tables in a tf.function
    # and hand them to a stateful model (whose tables are checkpointed).
    @tf.function(autograph=False)
    def tables():
      em = tfc.ContinuousBatchedEntropyModel(
          prior, coding_rank=3, compression=True, stateless=True,
          offset_heuristic=False)
      return em.cdf, em.cdf_offset

    cdf, cdf_offset = tables()
    return tfc.ContinuousBatchedEntropyModel(
        prior_shape=prior.batch_shape, cdf=cdf, cdf_offset=cdf_offset,
        coding_rank=3, compression=True, offset_heuristic=False)

  def frozen_config(self):
    """What `restore_frozen` needs to rebuild the tables' placeholders."""
    self._require_frozen()
    return {name: em.get_config() for name, em in self._frozen.items()
            if isinstance(em, tfc.ContinuousBatchedEntropyModel)}

  def restore_frozen(self, configs):
    """Creates table placeholders (filled by restoring a checkpoint)."""
    self._set_frozen({
        name: tfc.ContinuousBatchedEntropyModel(**config)
        for name, config in configs.items()})

  def _set_frozen(self, batched):
    frozen = dict(batched)
    if self._uses_indexed_model():
      # Not trained and with no get_config in tfc; cheap to build (~0.2 s).
      frozen["indexed"] = self._indexed_entropy_model(compression=True)
    # An attribute per model, so Keras tracks their variables for checkpoints.
    for name, em in frozen.items():
      setattr(self, f"frozen_{name}", em)
    self._frozen = frozen
    # Traced with, or computed from, the old tables.
    self.__dict__.pop("_function_cache", None)
    self.__dict__.pop("_min_bits_cache", None)

  def codec_variables(self):
    """The variables that define the codec: weights, then frozen tables.

    Excludes optimizer and metric state, so the fingerprint of a model does not
    change when it is compiled.
    """
    variables = list(self.trainable_variables)
    for name in sorted(self._frozen or {}):
      variables.extend(self._frozen[name].variables)
    return variables

  @property
  def is_frozen(self):
    return self._frozen is not None

  def _require_frozen(self):
    if self._frozen is None:
      raise RuntimeError(
          f"The {self.architecture!r} model has no range-coding tables yet: call "
          "model.update() after training (fit() does it), or load a model saved "
          "with dpc_tf.save_model().")

  # -- Training --------------------------------------------------------------

  def call(self, x, training=False, quality=None):
    """Returns (x_hat, bits per image) for a batch x in [0, 1].

    `quality`: for a variable-rate model, a scalar or one value per image
    (float, in `quality_range`); None for fixed-rate models.
    """
    level = None if quality is None else tf.cast(quality, tf.float32) - 1.0
    if self.variable_rate and level is None:
      raise QualityError("A variable-rate model needs quality= (scalar or one "
                         "per image) in model(x, quality=...).")
    return self._forward(x, training, level)

  def compile(self, optimizer="adam", distortion="mse", lmbda=None,
              quantization_proxy="ste", **kwargs):
    """Configures training.

    Args:
      optimizer: a Keras optimizer.
      distortion: a `perceptual.Distortion` or the name of a registered one.
      lmbda: the loss per image is bpp + lmbda · distortion · scale, where
        scale is the distortion's `lmbda_scale` (255² for MSE, as CompressAI).
        None: the distortion's `default_lmbda`. Variable-rate models take
        no lmbda here: they train each image at one of their `lmbdas`.
      quantization_proxy: what the synthesis transform sees while training:
        "ste" (rounding with straight-through gradients, as Minnen & Singh
        2020) or "noise" (additive uniform noise, as Ballé et al.). The rate
        always uses additive noise.
      **kwargs: passed to `tf.keras.Model.compile` (e.g. `steps_per_execution`).
    """
    if quantization_proxy not in QUANTIZATION_PROXIES:
      raise ValueError(f"quantization_proxy must be one of {QUANTIZATION_PROXIES},"
                       f" got {quantization_proxy!r}.")
    distortion = perceptual.get_distortion(distortion)
    if self.variable_rate:
      if lmbda is not None:
        raise ValueError(f"This variable-rate model trains at its lmbdas "
                         f"{list(self.lmbdas)}; do not pass lmbda={lmbda}.")
    else:
      lmbda = distortion.default_lmbda if lmbda is None else float(lmbda)
      if not lmbda > 0:
        raise ValueError(f"lmbda must be > 0, got {lmbda}.")
    super().compile(optimizer=optimizer, **kwargs)
    self.lmbda = lmbda
    self.distortion = distortion
    self.quantization_proxy = quantization_proxy
    names = ["loss", "bpp", "distortion", "mse", "psnr"]
    self._metric_names = names
    self._trackers = {name: tf.keras.metrics.Mean(name=name) for name in names}

  @property
  def metrics(self):
    trackers = getattr(self, "_trackers", None)
    return list(trackers.values()) if trackers else []

  def _batch_qualities(self, x, training):
    """(qualities [B] or None, λ per image [B] or a scalar) for a batch."""
    if not self.variable_rate:
      return None, tf.constant(self.lmbda, tf.float32)
    batch = tf.shape(x)[0]
    n = len(self.lmbdas)
    if training:
      # One trained level per image, uniformly: every gain vector learns in
      # every step (Cui et al. train on the discrete levels).
      levels = tf.random.uniform([batch], 0, n, dtype=tf.int32)
    else:
      levels = tf.range(batch) % n  # Deterministic for validation.
    lmbdas = tf.gather(tf.constant(self.lmbdas, tf.float32), levels)
    return tf.cast(levels, tf.float32) + 1.0, lmbdas

  def _terms(self, x, x_hat, bits, lmbda):
    """Per-image loss and every reported term, each of shape [batch]."""
    num_pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]), bits.dtype)
    bpp = bits / num_pixels
    distortion, components = self.distortion.terms(x, x_hat)
    distortion = tf.cast(distortion, tf.float32)
    mse = tf.reduce_mean(
        tf.math.squared_difference(x, tf.clip_by_value(x_hat, 0.0, 1.0)),
        axis=(1, 2, 3))
    loss = bpp + lmbda * self.distortion.lmbda_scale * distortion
    terms = dict(loss=loss, bpp=bpp, distortion=distortion, mse=mse,
                 psnr=-10.0 * tf.math.log(tf.maximum(mse, 1e-10)) / math.log(10.0))
    if len(components) > 1:
      terms.update({k: tf.cast(v, tf.float32) for k, v in components.items()})
    return terms

  def _report(self, terms):
    for name, value in terms.items():
      if name not in self._trackers:
        # Components of the distortion (e.g. lpips, msssim): created on the
        # first trace, so the loss's names need not be known in advance.
        self._trackers[name] = tf.keras.metrics.Mean(name=name)
      self._trackers[name].update_state(value)
    return {name: tracker.result() for name, tracker in self._trackers.items()}

  def _check_compiled(self):
    if self.distortion is None:
      raise RuntimeError("Call model.compile(optimizer, distortion, lmbda) first.")

  def train_step(self, data):
    # Images only; Keras wraps arrays as (x,) (fit on NumPy, train_on_batch).
    x, _, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
    self._check_compiled()
    qualities, lmbda = self._batch_qualities(x, training=True)
    with tf.GradientTape() as tape:
      x_hat, bits = self(x, training=True, quality=qualities)
      terms = self._terms(x, x_hat, bits, lmbda)
      # Mean over the global batch: tf.distribute sums replicas' gradients.
      loss = tf.nn.compute_average_loss(terms["loss"])
    self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
    return self._report(terms)

  def test_step(self, data):
    x, _, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
    self._check_compiled()
    qualities, lmbda = self._batch_qualities(x, training=False)
    x_hat, bits = self(x, training=False, quality=qualities)
    return self._report(self._terms(x, x_hat, bits, lmbda))

  def predict_step(self, x):
    raise NotImplementedError(
        "predict() is not supported: use dpc_tf.Codec to compress images, or "
        "model(x) for the reconstruction and estimated bits.")

  def fit(self, *args, **kwargs):
    history = super().fit(*args, **kwargs)
    self.update()
    return history

  # -- Compression -----------------------------------------------------------

  def _pad(self, image):
    """uint8 [H, W, 3] -> float [1, H', W', 3] in [0, 1], H', W' multiples of stride.

    Pads by repeating the last row and column: unlike zeros, this adds no edge
    for the codec to spend bits on.
    """
    x = tf.cast(image, tf.float32)[None] / 255.0
    shape = tf.shape(x)
    pad_h = (-shape[1]) % self.stride
    pad_w = (-shape[2]) % self.stride
    x = tf.concat([x, tf.repeat(x[:, -1:], pad_h, axis=1)], axis=1)
    x = tf.concat([x, tf.repeat(x[:, :, -1:], pad_w, axis=2)], axis=2)
    return x

  def _padded_shape(self, image_shape):
    return -(-image_shape // self.stride) * self.stride

  def _to_image(self, x_hat, image_shape):
    x_hat = x_hat[0, :image_shape[0], :image_shape[1], :]
    return tf.saturate_cast(tf.round(x_hat * 255.0), tf.uint8)

  # The compression methods below run as graphs traced once per model with
  # shape-polymorphic signatures when called eagerly (a new image size does
  # not retrace), and as plain ops inside a caller's tf.function (export).

  def _traced(self, name):
    """The cached tf.function `name` of `tf_functions()` (or analyze/recode)."""
    # Outside Keras's attribute tracking: a cache, not part of the model.
    cache = self.__dict__.setdefault("_function_cache", {})
    if not cache:
      spec = self.input_specs()
      functions = {key: (f.python_function, f.input_signature)
                   for key, f in self.tf_functions().items()}
      functions.update(
          analyze=(self.analyze_image, [spec["image"]]),
          compress_analyzed=(self.compress_analyzed,
                             [spec["analyzed"], spec["image_shape"]] + spec["quality"]),
          decode_latents=(self._decode_latents_image,
                          [spec["image_shape"]] + spec["strings"] + spec["quality"]),
          synthesize=(lambda y_hat: self._to_image(self.synthesis_transform(y_hat),
                                                   tf.shape(y_hat)[1:3] * 16),
                      [spec["latents"]]))
      # In process, the transforms' kernels are computed once, not per call
      # (layers.InferenceKernels); exported SavedModels compute them
      # in the graph, from the saved weights alone.
      kernels = layers.InferenceKernels()
      for key, (function, signature) in functions.items():
        cache[key] = self._graph_function(
            layers.with_inference_kernels(function, kernels), signature)
    return cache[name]

  @staticmethod
  def _use_traced():
    # Eager callers get the traced graphs, unless TF's debugging switch
    # tf.config.run_functions_eagerly(True) is on: then the ops run eagerly
    # (as they do inside a caller's tf.function).
    return tf.executing_eagerly() and not tf.config.functions_run_eagerly()

  def trace_decoder(self):
    """Traces the decoder now rather than at the first decode (servers)."""
    self._require_frozen()
    self._traced("decompress").get_concrete_function()

  def _quality_inputs(self, quality):
    """[] for a fixed-rate model, [float32 quality] for a variable-rate one."""
    if isinstance(quality, tf.Tensor):
      return [tf.cast(quality, tf.float32)] if self.variable_rate else []
    quality = self.check_quality(quality)  # A clear error before any graph.
    return [tf.constant(quality, tf.float32)] if self.variable_rate else []

  def analyze_image(self, image):
    """uint8 [H, W, 3] -> the analysis transform's output (before any gain).

    The costly half of encoding; `compress_analyzed` codes it at a quality,
    so rate control runs the transform once and re-codes only.
    """
    if self._use_traced():
      return self._traced("analyze")(tf.convert_to_tensor(image, tf.uint8))
    return self.analysis_transform(
        self._pad(tf.convert_to_tensor(image, tf.uint8)))

  def compress_analyzed(self, y, image_shape, quality=None):
    """`analyze_image`'s output -> {string name: scalar string, "image_shape"}."""
    self._require_frozen()
    if self._use_traced():
      return self._traced("compress_analyzed")(
          y, tf.convert_to_tensor(image_shape, tf.int32),
          *self._quality_inputs(quality))
    strings = self._compress_latents(y, self._level(quality))
    outputs = {name: s[0] for name, s in zip(self.string_names, strings)}
    outputs["image_shape"] = tf.convert_to_tensor(image_shape, tf.int32)
    return outputs

  def compress_image(self, image, quality=None):
    """uint8 [H, W, 3] -> {string name: scalar string, "image_shape": int32 [2]}.

    `quality`: in `quality_range` for a variable-rate model, None otherwise.
    """
    self._require_frozen()
    image = tf.convert_to_tensor(image, tf.uint8)
    if self._use_traced():
      return self._traced("compress")(image, *self._quality_inputs(quality))
    return self.compress_analyzed(self.analyze_image(image),
                                  tf.shape(image)[:2], quality)

  def decompress_image(self, image_shape, *strings, quality=None, tile=None):
    """(int32 [2] image shape, strings in `string_names` order) -> uint8 [H, W, 3].

    `tile`: the side in pixels (a multiple of 16) of the tiles the synthesis
    transform runs on, to bound memory (see `tile_size`); None decodes in
    tiles of `tile_size` above `tile_above_pixels`, 0 never does. Tiles run
    only when called eagerly (the SavedModel's graph decodes whole).
    """
    self._require_frozen()
    if len(strings) != len(self.string_names):
      raise ValueError(f"{self.architecture} decodes {len(self.string_names)} "
                       f"strings ({', '.join(self.string_names)}), got {len(strings)}.")
    image_shape = tf.convert_to_tensor(image_shape, tf.int32)
    if self._use_traced():
      tile = self._tile_for(image_shape.numpy(), tile)
      if tile:
        latents = self._traced("decode_latents")(
            image_shape, *[tf.convert_to_tensor(s, tf.string) for s in strings],
            *self._quality_inputs(quality))
        return tf.convert_to_tensor(self._synthesize_tiled(
            latents.numpy(), image_shape.numpy(), tile))
      return self._traced("decompress")(
          image_shape, *[tf.convert_to_tensor(s, tf.string) for s in strings],
          *self._quality_inputs(quality))["image"]
    x_hat = self._decompress([tf.reshape(s, [1]) for s in strings],
                             self._padded_shape(image_shape),
                             self._level(quality))
    return self._to_image(x_hat, image_shape)

  def _tile_for(self, image_shape, tile):
    """The tile side to decode an image of this shape with (0: whole)."""
    if type(self)._decompress is not CompressionModel._decompress:
      return 0  # A subclass with its own decoder: no latents to tile.
    if tile is None:
      padded = self._padded_shape(np.asarray(image_shape))
      tile = self.tile_size if padded[0] * padded[1] > self.tile_above_pixels else 0
    tile = int(tile)
    if tile < 0 or tile % 16:
      raise ValueError(f"tile must be a positive multiple of 16 pixels (or 0 "
                       f"for no tiles), got {tile}.")
    return tile

  def _decode_latents_image(self, image_shape, *args):
    """The traced half of a tiled decode: strings -> latents for the synthesis."""
    n = len(self.string_names)
    level = self._level(args[n] if args[n:] else None)
    return self._decode_latents([tf.reshape(s, [1]) for s in args[:n]],
                                self._padded_shape(image_shape), level)

  def _synthesize_tiled(self, latents, image_shape, tile):
    """Latents [1, h, w, C] -> uint8 [H, W, 3], synthesised tile by tile.

    Each tile of `tile // 16` latents is synthesised with `synthesis_margin`
    latents of its neighbours on each side (zeros past the image's edges, as
    the whole transform pads), and the margin's pixels are cropped off.
    """
    height, width = (int(v) for v in image_shape)
    step, margin = tile // 16, self.synthesis_margin
    _, rows, cols, _ = latents.shape
    synthesize = self._traced("synthesize")
    image = np.empty((height, width, 3), np.uint8)
    for i in range(0, rows, step):
      for j in range(0, cols, step):
        if 16 * i >= height or 16 * j >= width:
          continue  # Only padding.
        i0, j0 = max(0, i - margin), max(0, j - margin)
        part = synthesize(latents[:, i0:min(rows, i + step + margin),
                                  j0:min(cols, j + step + margin)]).numpy()
        top, left = 16 * (i - i0), 16 * (j - j0)
        h = min(16 * step, height - 16 * i)
        w = min(16 * step, width - 16 * j)
        image[16 * i:16 * i + h, 16 * j:16 * j + w] = part[top:top + h, left:left + w]
    return image

  def min_string_bytes(self, image_shape):
    """The fewest bytes each string (`string_names` order) of an encoded
    image of this [height, width] can have, from the frozen coding tables.

    Each symbol narrows the range coder's interval by at most its table's most
    probable mass (plus 2^-16 for rounding), so N symbols cost at least
    I = sum(-log2 p_max) bits, and the encoder writes at least (I - 16) / 8
    bytes minus the zeros it may leave implicit at the end (a few bytes; 18
    allowed). A header that declares a huge image over short strings — a
    decompression bomb — is refused with this before any tensor is allocated.
    """
    self._require_frozen()
    padded = [-(-int(side) // self.stride) * self.stride for side in image_shape]
    bounds = []
    for table, positions in self._string_symbols(*padded):
      bits = positions * self._min_bits_per_position(table)
      bounds.append(max(0, math.floor((bits - 16) / 8) - 18))
    return tuple(bounds)

  def _min_bits_per_position(self, table):
    """Fewest bits a latent position costs in frozen model `table`: the sum over
    channels for a batched model (one CDF per channel), the minimum over CDFs
    for the indexed one (one symbol per position)."""
    cache = self.__dict__.setdefault("_min_bits_cache", {})
    if table not in cache:
      em = self._frozen[table]
      bits = -np.log2(np.minimum(1.0, _max_masses(em.cdf.numpy()) + 2.0**-16))
      cache[table] = float(bits.sum() if table != "indexed" else bits.min())
    return cache[table]

  def _string_symbols(self, padded_height, padded_width):
    """[(frozen table name, latent positions)] per string, `string_names` order."""
    raise NotImplementedError(
        f"{type(self).__name__} must implement _string_symbols(padded_height, "
        "padded_width): the decoder needs it to refuse decompression bombs "
        "(see CompressionModel.min_string_bytes).")

  def image_latents(self, image, quality=None):
    """uint8 [H, W, 3] -> the quantised latents (what is entropy-coded).

    Uses core TensorFlow ops only (no range coding), so it runs where tfc's
    custom ops are not available, e.g. stock TF Serving.
    """
    return self._latents(self._pad(tf.convert_to_tensor(image, tf.uint8)),
                         self._level(quality))

  def image_from_latents(self, latents, image_shape, quality=None):
    """Quantised latents and int32 [2] image shape -> uint8 [H, W, 3]; core ops only."""
    x_hat = self.synthesis_transform(
        self._ungain_latents(latents, self._level(quality)))
    return self._to_image(x_hat, tf.convert_to_tensor(image_shape, tf.int32))

  def input_specs(self):
    """The inputs of the compression methods as named `tf.TensorSpec`s.

    The one definition of their signatures: `tf_functions` (and so the
    SavedModels of `serving.export`, whose input names these are) and the
    graphs eager calls run (`_traced`) both build on it. Shapes leave the
    image size open, so one trace serves every size. "strings" and
    "quality" are lists: one string per `string_names`, and a quality for
    variable-rate models only.
    """
    return dict(
        image=tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
        image_shape=tf.TensorSpec([2], tf.int32, name="image_shape"),
        strings=[tf.TensorSpec([], tf.string, name=n) for n in self.string_names],
        latents=tf.TensorSpec([1, None, None, None], tf.float32, name="latents"),
        # `analyze_image`'s output, before any gain.
        analyzed=tf.TensorSpec([1, None, None, None], tf.float32, name="y"),
        quality=([tf.TensorSpec([], tf.float32, name="quality")]
                 if self.variable_rate else []))

  def tf_functions(self):
    """The compression methods as `tf.function`s with input signatures.

    {"compress", "decompress", "latents", "from_latents"}, each returning a
    dict of named outputs: the SavedModel signatures `serving.export` writes.
    They compute the same bits and pixels as the eager methods. A
    variable-rate model's functions take a float32 `quality` last.
    """
    self._require_frozen()
    spec = self.input_specs()
    image, shape, quality = spec["image"], spec["image_shape"], spec["quality"]
    n = len(self.string_names)

    def optional_quality(args):
      return args[0] if args else None

    def compress(image, *q):
      return self.compress_image(image, optional_quality(q))

    def decompress(image_shape, *args):
      return {"image": self.decompress_image(
          image_shape, *args[:n], quality=optional_quality(args[n:]))}

    def latents_fn(image, *q):
      return {"latents": self.image_latents(image, optional_quality(q))}

    def from_latents(latents, image_shape, *q):
      return {"image": self.image_from_latents(latents, image_shape,
                                               optional_quality(q))}

    return dict(
        compress=self._graph_function(compress, [image] + quality),
        decompress=self._graph_function(
            decompress, [shape] + spec["strings"] + quality),
        latents=self._graph_function(latents_fn, [image] + quality),
        from_latents=self._graph_function(
            from_latents, [spec["latents"], shape] + quality))

  def _graph_function(self, function, input_signature):
    """`tf.function(function)`, with AutoGraph only if `self.autograph`."""
    if self.autograph:
      return tf.function(function, input_signature=input_signature)

    def plain_ops(*args):
      try:
        return function(*args)
      except tf.errors.OperatorNotAllowedInGraphError as error:
        raise tf.errors.OperatorNotAllowedInGraphError(
            f"{type(self).__name__}'s compression graphs trace without "
            "AutoGraph (CompressionModel.autograph = False), and its code "
            "uses a tensor as a Python bool or iterable. Use TensorFlow ops "
            "(tf.cond, tf.where) there, dpc_tf.layers.GDN instead of tfc.GDN, "
            "or set `autograph = True` on the model class. "
            f"TensorFlow said: {error}") from error

    return tf.function(plain_ops, input_signature=input_signature,
                       autograph=False)

  # -- For subclasses ----------------------------------------------------------

  # `level` is the 0-based rate level (a float scalar, or one per image in
  # training) of a variable-rate model, None for fixed-rate ones; pass it to
  # the `_gain_*` / `_ungain_*` methods around what is entropy-coded.

  def _forward(self, x, training, level):
    """x [B, H, W, 3] -> (x_hat, bits [B])."""
    raise NotImplementedError

  def _compress_latents(self, y, level):
    """Analysis output [1, h, w, C] -> list of [1] strings (string_names order)."""
    raise NotImplementedError

  def _decompress(self, strings, padded_shape, level):
    """List of [1] strings and int32 [2] padded size -> x_hat [1, H, W, 3]."""
    return self.synthesis_transform(
        self._decode_latents(strings, padded_shape, level))

  def _decode_latents(self, strings, padded_shape, level):
    """List of [1] strings and int32 [2] padded size -> what the synthesis
    transform takes (the decoded latents, inverse gains applied)."""
    raise NotImplementedError

  def _latents(self, x, level):
    """Padded [1, H, W, 3] -> quantised latents (before the inverse gains)."""
    raise NotImplementedError

  def _bottleneck(self, em, value, *indexes, training, loc=None):
    """(what the synthesis sees, bits) for one entropy-coded tensor.

    The rate always comes from additive uniform noise; in training the
    synthesis sees the `quantization_proxy`, otherwise the rounded value.
    """
    extra = {} if loc is None else {"loc": loc}
    value_tilde, bits = em(value, *indexes, training=training, **extra)
    if not training or self.quantization_proxy == "noise":
      return value_tilde, bits
    return em.quantize(value, **extra), bits


def _max_masses(cdf):
  """The largest probability mass of each CDF in tfc's flat range-coding table.

  The table is CDFs one after another, each [±precision, 0, ..., 2^precision]
  padded with 2^precision (tfc's `ScanCDF` reads it the same way).
  """
  cdf = [int(v) for v in cdf]
  masses, i = [], 0
  while i < len(cdf):
    precision = abs(cdf[i])
    top = 1 << precision
    start = i = i + 1
    while cdf[i] != top:
      i += 1
    masses.append(max(np.diff(cdf[start:i + 1])) / top)
    i += 1
    while i < len(cdf) and cdf[i] == top:
      i += 1
  return np.array(masses)
