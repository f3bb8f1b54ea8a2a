"""Keras layers for learned image codecs: GDN transforms and hyper-transforms.

Every layer here is a plain Keras layer with `get_config`/`from_config`, so a
user can compose a codec of their own from them (see README). Images enter the
analysis transform as floats in [0, 1] and leave the synthesis transform on the
same scale.

GDN (`layers.GDN`, tfc's with its constant exponents as numbers, so that
graphs trace without AutoGraph) is always used as the `activation` of a
`tfc.SignalConv2D`, as tfc's own models do.

Precision: each transform has a `precision`, "float32" or "mixed_bfloat16"
(`set_training_precision` sets it on a whole model). With "mixed_bfloat16" its
convolutions compute in bfloat16 *in training calls only* (GDN stays
float32); its variables, inputs and outputs stay float32, so whatever lies
between the transforms (quantisation, entropy models, rate, loss) is float32,
and inference and compression are float32 whatever the model was trained with.
"""

import contextlib
import threading

import tensorflow as tf
import tensorflow_compression as tfc

from dpc_tf import precision as precision_lib

_PACKAGE = "dpc_tf"
_state = threading.local()


@contextlib.contextmanager
def weights_to_be_restored():
  """Builds layers with zero kernels, for weights a checkpoint will overwrite.

  Drawing random kernels is most of the time it takes to build a large model
  (seconds); loading a saved one needs none of it.
  """
  _state.skip_init = True
  try:
    yield
  finally:
    _state.skip_init = False


@tf.keras.utils.register_keras_serializable(package="dpc_tf")
class ZeroRDFTParameter(tfc.RDFTParameter):
  """tfc's RDFT kernel parameter; without an initial value, zeros and no FFT.

  tfc takes the RDFT of the initial kernel; for the zero kernels of a model
  about to be restored that is zeros, yet each eager `rfft2d` costs ~0.15 s
  (1.5 s of loading a 192-filter hyperprior). Same variables, names and
  shapes as `tfc.RDFTParameter(None, shape=shape, dtype=tf.float32)`.
  """

  def __init__(self, initial_value=None, name="kernel", shape=None,
               dtype=None):
    if initial_value is not None:
      super().__init__(initial_value, name=name, dtype=dtype)
      return
    tfc.Parameter.__init__(self, name=name)  # pylint: disable=non-parent-init-called
    self._shape = tf.TensorShape(shape)
    self._dtype = tf.as_dtype(dtype or tf.float32)
    # The variables hold the RDFT over the spatial axes, moved last.
    spatial, channels = self._shape[:-2], self._shape[-2:]
    rdft_shape = channels.concatenate(spatial[:-1]).concatenate(
        [spatial[-1] // 2 + 1])
    self.real = tf.Variable(tf.zeros(rdft_shape, self._dtype), name=f"{name}_real")
    self.imag = tf.Variable(tf.zeros(rdft_shape, self._dtype), name=f"{name}_imag")

  @classmethod
  def from_config(cls, config):
    return cls(**config)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class GDN(tfc.GDN):
  """tfc's GDN, whose constant exponents `alpha` and `epsilon` are numbers.

  tfc picks its fast path (|x| and no square root for the default alpha = 1,
  epsilon = 1) by testing `alpha == 1` on tensors, which in a graph only
  AutoGraph can turn into a branch. Converting tfc's and Keras' code with
  AutoGraph was most of the time it took to trace a codec (seconds at every
  `dpc compress`); with Python numbers the test is decided while tracing,
  the same path is taken as in eager mode, and graphs trace without
  AutoGraph. Same variables, config and values as `tfc.GDN`.
  """

  @property
  def alpha(self):
    value = _constant_value(self.alpha_parameter)
    return super().alpha if value is None else value

  @property
  def epsilon(self):
    value = _constant_value(self.epsilon_parameter)
    return super().epsilon if value is None else value


def _constant_value(parameter):
  """A constant (not trained) parameter as a Python float, else None."""
  if parameter is None or callable(parameter):
    return None
  value = tf.get_static_value(parameter)  # Eager or graph constants alike.
  return None if value is None else float(value)


def _conv(filters, kernel, *, down=1, up=1, activation=None, use_bias=True,
          name=None, kernel_parameter="rdft"):
  extra = {}
  if getattr(_state, "skip_init", False):
    extra["kernel_initializer"] = "zeros"
  return tfc.SignalConv2D(
      filters, (kernel, kernel), name=name, corr=up == 1, strides_down=down,
      strides_up=up, padding="same_zeros", use_bias=use_bias,
      kernel_parameter=kernel_parameter, activation=activation, **extra)


class InferenceKernels:
  """The kernels of RDFT-parameterised convolutions, each computed once.

  tfc computes such a layer's kernel from its RDFT parameters (an inverse FFT
  of every filter) at each call: ~40 % of a 192-filter analysis transform's
  time on a Kodak image on 2 cores. Training needs that, as the parameters
  change at each step; coding does not. Graphs traced by
  `with_inference_kernels` read a kernel computed here, with the same op, so
  they compute the same values bit for bit. Each is computed when a graph is
  first traced through its layer (a one-shot decoder computes no analysis
  kernels). Make a new one after the weights change (`update()` does, by
  dropping the traced graphs). Not tracked, not saved.
  """

  def __init__(self):
    self._kernels = {}

  def kernel(self, layer):
    """`layer`'s kernel as a variable, or None if not RDFT-parameterised."""
    if not isinstance(layer.kernel_parameter, tfc.RDFTParameter):
      return None
    if id(layer) not in self._kernels:
      with tf.init_scope():  # Computed eagerly, even while tracing.
        self._kernels[id(layer)] = tf.Variable(
            layer.kernel, trainable=False, name=f"{layer.name}_inference_kernel")
    return self._kernels[id(layer)]


def with_inference_kernels(function, kernels):
  """`function`, which when traced uses `kernels` (`InferenceKernels`) in
  the inference calls of every transform instead of computing them."""

  def traced_with_inference_kernels(*args):
    previous = getattr(_state, "inference_kernels", None)
    _state.inference_kernels = kernels
    try:
      return function(*args)
    finally:
      _state.inference_kernels = previous

  return traced_with_inference_kernels


def set_training_precision(model, precision):
  """Sets the training precision of every transform of `model` (or a layer).

  "mixed_bfloat16" makes training steps compute the transforms' convolutions
  in bfloat16 (fast only with bfloat16 hardware: `dpc_tf.precision`);
  inference and compression stay float32. Takes effect when a step is next
  traced: call it before the first `fit`. Returns the transforms it set.
  """
  precision_lib.check_precision(precision)
  stacks = [m for m in [model, *model.submodules] if isinstance(m, _Stack)]
  if not stacks:
    raise ValueError(f"{model.name!r} has no dpc_tf transforms to set the "
                     "precision of.")
  for stack in stacks:
    stack.precision = precision
  return stacks


def _set_policy(conv, policy):
  # Keras reads a layer's policy when it is called (autocasting the inputs)
  # and tfc converts the kernel to `compute_dtype` at each call, so switching
  # the policy between calls switches the computation; the variables, created
  # float32, are untouched. (`_set_dtype_policy` is what Keras' constructor
  # calls; Keras 2 has no public setter.) A GDN activation keeps its float32
  # policy, so it autocasts the bfloat16 convolution output and normalises in
  # float32, as Keras' mixed precision keeps normalisations in float32; tfc
  # also stores GDN's constant alpha and epsilon in the dtype it was built
  # with, which a bfloat16 call would have to cast back in every step.
  if conv.dtype_policy.name != policy:
    conv._set_dtype_policy(policy)  # pylint: disable=protected-access


class _Stack(tf.keras.layers.Layer):
  """A sequence of layers built from hyper-parameters, serialised by them."""

  # Training calls pad with tf.pad and convolve with VALID padding rather than
  # use tfc's EXPLICIT-padding ops: TF 2.14's oneDNN rewrite leaves the
  # gradients (Conv2DBackpropFilter/Input) of EXPLICIT-padding convolutions,
  # and the transposed convolutions, to Eigen's kernels, which are slower in
  # float32 and ~10x slower in bfloat16 (bench/results/precision.md). Same
  # function; inference keeps tfc's default, so coded bits do not change.
  # A class attribute, so the benchmark can compare both.
  pad_in_training = True

  def __init__(self, name=None, precision=precision_lib.FLOAT32, **kwargs):
    super().__init__(name=name, **kwargs)
    self.precision = precision_lib.check_precision(precision)
    self._stack = []

  def build(self, input_shape):
    # From shapes alone, without running the layers: building a large model
    # by a forward pass costs seconds of eager ops at every `dpc` start.
    # Each in its own name scope, as Keras's __call__ would do: otherwise all
    # weights are named `analysis/kernel_real:0` and HDF5 saving fails.
    shape = tf.TensorShape(input_shape)
    for layer in self._stack:
      with tf.name_scope(layer.name):
        if (getattr(_state, "skip_init", False)
            and isinstance(layer.kernel_parameter, str)
            and layer.kernel_parameter == "rdft"):
          layer.kernel_parameter = ZeroRDFTParameter(
              shape=tuple(layer.kernel_support) + (shape[-1], layer.filters))
        layer.build(shape)
        shape = shape[:-1].concatenate([layer.filters])
        if isinstance(layer.activation, tf.keras.layers.Layer):
          with tf.name_scope(layer.activation.name):
            # GDN: SignalConv2D leaves it to call().
            layer.activation.build(shape)
    super().build(input_shape)

  def call(self, x, training=None):
    # bfloat16 only in training steps (Keras passes the model's `training`
    # down); validation, compression and SavedModels compute in float32, so
    # bitstreams never depend on how the model was trained. The policy is read
    # while a step is traced, hence set at every call.
    if tf.is_tensor(training):
      training = tf.get_static_value(training)  # None if only known at run time.
    policy = self.precision if training else precision_lib.FLOAT32
    explicit = not (training and self.pad_in_training)
    kernels = None if training else getattr(_state, "inference_kernels", None)
    for layer in self._stack:
      _set_policy(layer, policy)
      # tfc's setter refuses built layers, but `call` reads it at each call.
      layer._use_explicit = explicit  # pylint: disable=protected-access
      kernel = kernels.kernel(layer) if kernels is not None else None
      if kernel is None:
        x = layer(x)
        continue
      # tfc's `kernel` property converts whatever `kernel_parameter` holds;
      # while tracing this call it holds the precomputed kernel.
      parameter = layer._kernel_parameter  # pylint: disable=protected-access
      layer._kernel_parameter = kernel  # pylint: disable=protected-access
      try:
        x = layer(x)
      finally:
        layer._kernel_parameter = parameter  # pylint: disable=protected-access
    # float32 out whatever the layers computed in (a no-op in float32).
    return tf.cast(x, self.compute_dtype)

  def get_config(self):
    config = super().get_config()
    config.update(self._hparams(), precision=self.precision)
    return config

  def _hparams(self):
    raise NotImplementedError


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class AnalysisTransform(_Stack):
  """Image -> latents: four 5x5 stride-2 convolutions with GDN (Ballé 2017/18).

  Downsamples by 16. Input: [B, H, W, 3] floats in [0, 1].
  """

  def __init__(self, num_filters=192, latent_depth=None, name="analysis",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_filters = int(num_filters)
    self.latent_depth = int(latent_depth or num_filters)
    for i in range(3):
      self._stack.append(_conv(self.num_filters, 5, down=2, name=f"conv_{i}",
                               activation=GDN(name=f"gdn_{i}")))
    self._stack.append(_conv(self.latent_depth, 5, down=2, name="conv_3"))

  def _hparams(self):
    return dict(num_filters=self.num_filters, latent_depth=self.latent_depth)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SynthesisTransform(_Stack):
  """Latents -> image: four 5x5 stride-2 transposed convolutions with inverse GDN.

  Upsamples by 16. Output: [B, H, W, channels], nominally in [0, 1] (not clipped,
  so that training sees the true error).
  """

  def __init__(self, num_filters=192, channels=3, name="synthesis", **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_filters = int(num_filters)
    self.channels = int(channels)
    for i in range(3):
      self._stack.append(_conv(
          self.num_filters, 5, up=2, name=f"conv_{i}",
          activation=GDN(name=f"igdn_{i}", inverse=True)))
    self._stack.append(_conv(self.channels, 5, up=2, name="conv_3"))

  def _hparams(self):
    return dict(num_filters=self.num_filters, channels=self.channels)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class HyperAnalysisTransform(_Stack):
  """Latents -> hyper-latents (downsamples by 4).

  `absolute_input=True` is Ballé et al. (2018)'s scale hyperprior, which only
  needs to predict scales and so looks at |y|; mean-scale models see y itself.
  """

  def __init__(self, num_filters=192, hyperprior_depth=None,
               absolute_input=False, name="hyper_analysis", **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_filters = int(num_filters)
    self.hyperprior_depth = int(hyperprior_depth or num_filters)
    self.absolute_input = bool(absolute_input)
    self._stack += [
        _conv(self.num_filters, 3, name="conv_0", activation=tf.nn.relu),
        _conv(self.num_filters, 5, down=2, name="conv_1", activation=tf.nn.relu),
        _conv(self.hyperprior_depth, 5, down=2, name="conv_2", use_bias=False),
    ]

  def call(self, y, training=None):
    return super().call(tf.abs(y) if self.absolute_input else y,
                        training=training)

  def _hparams(self):
    return dict(num_filters=self.num_filters,
                hyperprior_depth=self.hyperprior_depth,
                absolute_input=self.absolute_input)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class HyperSynthesisTransform(_Stack):
  """Hyper-latents -> entropy parameters (upsamples by 4).

  `output_depth` is the number of parameter channels: the latent depth for
  scale indexes only, twice that for means and scales.
  """

  def __init__(self, num_filters=192, output_depth=192,
               final_activation=None, name="hyper_synthesis", **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_filters = int(num_filters)
    self.output_depth = int(output_depth)
    self.final_activation = final_activation
    # kernel_parameter="variable": as in tfc, the RDFT parameterisation buys
    # nothing for these small kernels.
    self._stack += [
        _conv(self.num_filters, 5, up=2, name="conv_0", activation=tf.nn.relu,
              kernel_parameter="variable"),
        _conv(self.num_filters, 5, up=2, name="conv_1", activation=tf.nn.relu,
              kernel_parameter="variable"),
        _conv(self.output_depth, 3, name="conv_2",
              activation=tf.keras.activations.get(final_activation),
              kernel_parameter="variable"),
    ]

  def _hparams(self):
    return dict(num_filters=self.num_filters, output_depth=self.output_depth,
                final_activation=self.final_activation)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SliceTransform(_Stack):
  """Channel-conditional parameter network of Minnen & Singh (2020).

  Maps [hyper-parameters, previously decoded slices] to the means, scales or
  latent residual prediction of one slice, at the latent resolution.
  """

  def __init__(self, num_filters=192, output_depth=32, name="slice_transform",
               **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_filters = int(num_filters)
    self.output_depth = int(output_depth)
    hidden = max(self.num_filters * 2 // 3, self.output_depth)
    self._stack += [
        _conv(hidden, 5, name="conv_0", activation=tf.nn.relu,
              kernel_parameter="variable"),
        _conv(max(hidden // 2, self.output_depth), 5, name="conv_1",
              activation=tf.nn.relu, kernel_parameter="variable"),
        _conv(self.output_depth, 3, name="conv_2", kernel_parameter="variable"),
    ]

  def _hparams(self):
    return dict(num_filters=self.num_filters, output_depth=self.output_depth)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ChannelGains(tf.keras.layers.Layer):
  """Per-channel gains, one vector per rate level, for variable-rate codecs.

  Cui et al., "Asymmetric Gained Deep Image Compression With Continuous Rate
  Adaptation" (CVPR 2021): scaling the latents per channel before
  quantisation sets the rate, and one model learns a gain vector for each of
  a set of λ. Between two levels the gains are interpolated geometrically,
  g = g_i^(1-t) · g_(i+1)^t, so the rate moves continuously. The weights are
  the gains' logarithms, which keeps every gain positive.

  Call with `(x, level)`: `x` is [B, H, W, C]; `level` a float scalar or [B]
  in [0, num_levels - 1] (one level per image in training).

  Args:
    num_levels: the number of trained levels (λ values), at least 2.
    initial_log_gains: optional [num_levels] starting log-gains, the same for
      every channel (e.g. 0.5·log(λ_i/λ_ref) to start a pre-trained
      fixed-rate model at sensible rates); zeros by default.
  """

  def __init__(self, num_levels, initial_log_gains=None, name=None, **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_levels = int(num_levels)
    if self.num_levels < 2:
      raise ValueError(f"ChannelGains needs at least 2 levels, got {num_levels}.")
    if initial_log_gains is not None:
      initial_log_gains = [float(g) for g in initial_log_gains]
      if len(initial_log_gains) != self.num_levels:
        raise ValueError(f"initial_log_gains has {len(initial_log_gains)} values "
                         f"for {self.num_levels} levels.")
    self.initial_log_gains = initial_log_gains

  def build(self, input_shape):
    channels = int(tf.TensorShape(input_shape)[-1])
    start = self.initial_log_gains or [0.0] * self.num_levels
    self.log_gains = self.add_weight(
        "log_gains", shape=(self.num_levels, channels), dtype=tf.float32,
        initializer=tf.keras.initializers.Constant(
            [[g] * channels for g in start]))
    super().build(input_shape)

  def gains(self, level):
    """Gain vectors for `level` (scalar or [B]): [C] or [B, C]."""
    level = tf.clip_by_value(tf.cast(level, tf.float32), 0.0,
                             float(self.num_levels - 1))
    lower = tf.minimum(tf.cast(tf.floor(level), tf.int32), self.num_levels - 2)
    t = (level - tf.cast(lower, tf.float32))[..., None]
    log_gains = ((1.0 - t) * tf.gather(self.log_gains, lower) +
                 t * tf.gather(self.log_gains, lower + 1))
    return tf.exp(log_gains)

  def call(self, x, level):
    gains = self.gains(level)
    if gains.shape.rank == 2:
      gains = gains[:, None, None, :]
    return x * tf.cast(gains, x.dtype)

  def get_config(self):
    config = super().get_config()
    config.update(num_levels=self.num_levels,
                  initial_log_gains=self.initial_log_gains)
    return config
