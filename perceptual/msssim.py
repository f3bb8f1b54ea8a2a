"""MS-SSIM on NHWC images in [0, 1], built on `tf.image.ssim_multiscale`.

`tf.image.ssim_multiscale` with its five scales and 11-tap filter needs both
sides to be at least (11 - 1) * 2**4 + 1 = 161 pixels, but training crops are
often 64-128 px. Instead of failing, `msssim` uses as many scales as the image
supports, with the standard weights of Wang et al. (2003) truncated to those
scales and renormalised to sum to one. Images smaller than the filter itself
(under 11 px) use one scale with the filter shrunk to the largest odd size that
fits. For images of 161 px and more the result is exactly
`tf.image.ssim_multiscale(x, y, 1.0)`.
"""

import tensorflow as tf

# Wang et al. (2003), as used by `tf.image.ssim_multiscale`.
POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11


def msssim_config(height, width):
  """Returns (power_factors, filter_size) used for an image of this size.

  Pure Python on static sizes, so the choice is made once when tracing.
  """
  side = min(int(height), int(width))
  if side < 1:
    raise ValueError(f"MS-SSIM needs a non-empty image, got {height}x{width}.")
  if side < FILTER_SIZE:
    filter_size = side if side % 2 else side - 1
    return (1.0,), max(filter_size, 1)
  scales = 1
  while (scales < len(POWER_FACTORS) and
         (FILTER_SIZE - 1) * 2**scales + 1 <= side):
    scales += 1
  if scales == len(POWER_FACTORS):
    return POWER_FACTORS, FILTER_SIZE
  weights = POWER_FACTORS[:scales]
  total = sum(weights)
  return tuple(w / total for w in weights), FILTER_SIZE


def msssim(x, y):
  """Per-image MS-SSIM of two NHWC batches in [0, 1]; returns shape [batch].

  The spatial size must be static (known when tracing), as it is for training
  crops and for images given eagerly.
  """
  x, y, power_factors, filter_size = _inputs_and_config(x, y)
  return _ssim_multiscale(x, y, power_factors, filter_size)


def _inputs_and_config(x, y):
  """(x, y as float32, power factors, filter size), or a ValueError naming the shape."""
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.convert_to_tensor(y, tf.float32)
  if x.shape.rank != 4:
    raise ValueError(f"MS-SSIM expects NHWC images (rank 4), got shape {x.shape}.")
  height, width = x.shape[1], x.shape[2]
  if height is None or width is None:
    raise ValueError(
        "MS-SSIM needs a static image size to choose its scales; got "
        f"shape {x.shape}. Crop or resize to a fixed size first.")
  return (x, y) + msssim_config(height, width)


def _zero_nonfinite(gradient):
  return tf.where(tf.math.is_finite(gradient), gradient, tf.zeros_like(gradient))


def _ssim_multiscale(x, y, power_factors, filter_size):
  """`tf.image.ssim_multiscale` with gradients that stay finite.

  It clamps each scale's term at 0 (ReLU) and raises it to a power below 1,
  so where a term is 0 -- early in training, when the reconstruction looks
  nothing like the image -- the gradient is inf * 0 = NaN, and one such image
  turns the whole model into NaN. The true gradient there is 0 (the clamped
  term is flat), which is what this returns. Values are unchanged.
  """

  @tf.custom_gradient
  def value_and_gradient(x, y):
    with tf.GradientTape() as tape:
      tape.watch([x, y])
      value = tf.image.ssim_multiscale(
          x, y, max_val=1.0, power_factors=power_factors, filter_size=filter_size)

    def gradient(upstream):
      gx, gy = tape.gradient(value, [x, y], output_gradients=upstream)
      return _zero_nonfinite(gx), _zero_nonfinite(gy)

    return value, gradient

  return value_and_gradient(x, y)


def msssim_db(value):
  """MS-SSIM on the decibel scale the field reports: -10 log10(1 - MS-SSIM)."""
  value = tf.convert_to_tensor(value, tf.float32)
  return -10.0 * tf.math.log(tf.maximum(1.0 - value, 1e-10)) / tf.math.log(10.0)


# measure_msssim's graphs, one per (scales, filter size, channels): any image
# size with that configuration runs the same graph, so evaluating a dataset of
# many sizes (COCO, user photos) traces at most a handful of times instead of
# once per size.
_MEASURE_GRAPHS = {}


def measure_msssim(x, y):
  """(MS-SSIM, MS-SSIM dB) per image of two NHWC batches in [0, 1], to report.

  `msssim` and `msssim_db` as one graph, shared by every caller (`dpc eval`,
  `dpc compress`, the training logs): several times faster than eager
  MS-SSIM, and the same numbers wherever they are reported (a graph and eager
  ops can differ in the last bits). The graph is shape-polymorphic: it is
  traced once per MS-SSIM configuration (`msssim_config`), not per image
  size. A loss calls `msssim` itself, inside the training step.
  """
  x, y, power_factors, filter_size = _inputs_and_config(x, y)
  if x.shape[3] is None:
    raise ValueError(f"MS-SSIM needs a static number of channels; got shape {x.shape}.")
  key = (power_factors, filter_size, int(x.shape[3]))
  graph = _MEASURE_GRAPHS.get(key)
  if graph is None:
    graph = _MEASURE_GRAPHS[key] = _measure_graph(*key)
  return graph(x, y)


def measure_msssim_tracing_count():
  """How many times `measure_msssim` has traced a graph in this process."""
  return sum(graph.experimental_get_tracing_count()
             for graph in _MEASURE_GRAPHS.values())


def _measure_graph(power_factors, filter_size, channels):
  spec = tf.TensorSpec([None, None, None, channels], tf.float32)

  @tf.function(input_signature=[spec, spec])
  def graph(x, y):
    value = _ssim_multiscale(x, y, power_factors, filter_size)
    return value, msssim_db(value)

  return graph
