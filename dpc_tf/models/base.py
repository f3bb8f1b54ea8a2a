"""`CompressionModel`: what every codec architecture shares.

A model is a Keras `Model` whose `call(x, training)` returns the reconstruction
and the estimated bits of each image. Training minimises, per image,

    lmbda * bpp + distortion(x, x_hat)

averaged over the global batch, so `tf.distribute` (which sums gradients over
replicas) applies the same update as one device with the same global batch.

Before compressing, `update()` freezes the range-coding tables from the trained
priors (CompressAI's `update()`); they are saved with the weights, because
computing them again takes seconds.

Subclasses implement `_forward`, `_compress`, `_decompress` and `_latents`, and
name their entropy-coded strings in `string_names`.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

import perceptual

QUANTIZATION_PROXIES = ("ste", "noise")


class CompressionModel(tf.keras.Model):
  """Base class of the registered codec architectures."""

  architecture = None  # The registry name, set by `register_model`.
  # Images are padded to a multiple of this (the coarsest latent's stride).
  stride = 16

  def __init__(self, num_scales=64, scale_min=0.11, scale_max=256.0,
               name=None, **kwargs):
    super().__init__(name=name or self.architecture, **kwargs)
    self.num_scales = int(num_scales)
    self.scale_min = float(scale_min)
    self.scale_max = float(scale_max)
    self.lmbda = None
    self.distortion = None
    self.quantization_proxy = "ste"
    self._frozen = None

  def _build_weights(self):
    """Creates every variable from known channel counts, without a forward pass.

    Keras' `build()` and a forward pass on a dummy image both cost seconds for
    a large model, which `dpc` would pay at each start.
    """
    for layer, channels in self._layer_input_channels():
      layer.build(tf.TensorShape([None, None, None, channels]))
    self.built = True

  def _layer_input_channels(self):
    """[(layer, input channels)] for every transform of the model."""
    raise NotImplementedError

  # -- Configuration ---------------------------------------------------------

  def get_config(self):
    return dict(num_scales=self.num_scales, scale_min=self.scale_min,
                scale_max=self.scale_max)

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  @property
  def string_names(self):
    """Names of the entropy-coded strings, in the order `_compress` returns."""
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

  def call(self, x, training=False):
    """Returns (x_hat, bits per image) for a batch x in [0, 1]."""
    return self._forward(x, training)

  def compile(self, optimizer="adam", distortion="mse", lmbda=0.01,
              quantization_proxy="ste", **kwargs):
    """Configures training.

    Args:
      optimizer: a Keras optimizer.
      distortion: a `perceptual.Distortion` or the name of a registered one.
      lmbda: weight of the rate: the loss per image is lmbda*bpp + distortion.
      quantization_proxy: what the synthesis transform sees while training:
        "ste" (rounding with straight-through gradients, as Minnen & Singh
        2020) or "noise" (additive uniform noise, as Ballé et al.). The rate
        always uses additive noise.
      **kwargs: passed to `tf.keras.Model.compile` (e.g. `steps_per_execution`).
    """
    if quantization_proxy not in QUANTIZATION_PROXIES:
      raise ValueError(f"quantization_proxy must be one of {QUANTIZATION_PROXIES},"
                       f" got {quantization_proxy!r}.")
    if not lmbda >= 0:
      raise ValueError(f"lmbda must be >= 0, got {lmbda}.")
    super().compile(optimizer=optimizer, **kwargs)
    self.lmbda = float(lmbda)
    self.distortion = perceptual.get_distortion(distortion)
    self.quantization_proxy = quantization_proxy
    names = ["loss", "bpp", "distortion", "mse", "psnr"]
    self._metric_names = names
    self._trackers = {name: tf.keras.metrics.Mean(name=name) for name in names}

  @property
  def metrics(self):
    trackers = getattr(self, "_trackers", None)
    return list(trackers.values()) if trackers else []

  def _terms(self, x, x_hat, bits):
    """Per-image loss and every reported term, each of shape [batch]."""
    num_pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]), bits.dtype)
    bpp = bits / num_pixels
    distortion, components = self.distortion.terms(x, x_hat)
    distortion = tf.cast(distortion, tf.float32)
    mse = tf.reduce_mean(
        tf.math.squared_difference(x, tf.clip_by_value(x_hat, 0.0, 1.0)),
        axis=(1, 2, 3))
    terms = dict(loss=self.lmbda * bpp + distortion, bpp=bpp,
                 distortion=distortion, mse=mse,
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

  def train_step(self, x):
    self._check_compiled()
    with tf.GradientTape() as tape:
      x_hat, bits = self(x, training=True)
      terms = self._terms(x, x_hat, bits)
      # Mean over the global batch: tf.distribute sums replicas' gradients.
      loss = tf.nn.compute_average_loss(terms["loss"])
    self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
    return self._report(terms)

  def test_step(self, x):
    self._check_compiled()
    x_hat, bits = self(x, training=False)
    return self._report(self._terms(x, x_hat, bits))

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

  def compress_image(self, image):
    """uint8 [H, W, 3] -> {string name: scalar string, "image_shape": int32 [2]}.

    Runs eagerly when called eagerly: for one image that is faster than
    tracing a graph; `tf_functions()` has the graph versions for export.
    """
    self._require_frozen()
    image = tf.convert_to_tensor(image, tf.uint8)
    strings = self._compress(self._pad(image))
    outputs = {name: s[0] for name, s in zip(self.string_names, strings)}
    outputs["image_shape"] = tf.shape(image)[:2]
    return outputs

  def decompress_image(self, image_shape, *strings):
    """(int32 [2] image shape, strings in `string_names` order) -> uint8 [H, W, 3]."""
    self._require_frozen()
    if len(strings) != len(self.string_names):
      raise ValueError(f"{self.architecture} decodes {len(self.string_names)} "
                       f"strings ({', '.join(self.string_names)}), got {len(strings)}.")
    image_shape = tf.convert_to_tensor(image_shape, tf.int32)
    x_hat = self._decompress([tf.reshape(s, [1]) for s in strings],
                             self._padded_shape(image_shape))
    return self._to_image(x_hat, image_shape)

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
    raise NotImplementedError

  def image_latents(self, image):
    """uint8 [H, W, 3] -> the quantised latents the synthesis decodes.

    Uses core TensorFlow ops only (no range coding), so it runs where tfc's
    custom ops are not available, e.g. stock TF Serving.
    """
    return self._latents(self._pad(tf.convert_to_tensor(image, tf.uint8)))

  def image_from_latents(self, latents, image_shape):
    """Quantised latents and int32 [2] image shape -> uint8 [H, W, 3]; core ops only."""
    return self._to_image(self.synthesis_transform(latents),
                          tf.convert_to_tensor(image_shape, tf.int32))

  def tf_functions(self):
    """The compression methods as `tf.function`s with input signatures.

    {"compress", "decompress", "latents", "from_latents"}: what SavedModel
    export traces. They compute the same bits and pixels as the eager methods.
    """
    self._require_frozen()
    image = tf.TensorSpec([None, None, 3], tf.uint8, name="image")
    shape = tf.TensorSpec([2], tf.int32, name="image_shape")
    strings = [tf.TensorSpec([], tf.string, name=n) for n in self.string_names]
    latents = tf.TensorSpec([1, None, None, None], tf.float32, name="latents")
    return dict(
        compress=tf.function(self.compress_image, input_signature=[image]),
        decompress=tf.function(self.decompress_image,
                               input_signature=[shape] + strings),
        latents=tf.function(self.image_latents, input_signature=[image]),
        from_latents=tf.function(self.image_from_latents,
                                 input_signature=[latents, shape]))

  # -- For subclasses ----------------------------------------------------------

  def _forward(self, x, training):
    raise NotImplementedError

  def _compress(self, x):
    """Padded [1, H, W, 3] in [0, 1] -> list of [1] strings (string_names order)."""
    raise NotImplementedError

  def _decompress(self, strings, padded_shape):
    """List of [1] strings and int32 [2] padded size -> x_hat [1, H, W, 3]."""
    raise NotImplementedError

  def _latents(self, x):
    """Padded [1, H, W, 3] -> quantised latents (what the synthesis decodes)."""
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
