"""perceptual.msssim: MS-SSIM that matches TensorFlow's at full size and also
works on the small crops codecs train on."""

import importlib

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

import perceptual

# `perceptual.msssim` is the function; the module of the same name holds the
# scale choice (msssim_config) and the published weights.
msssim_lib = importlib.import_module("perceptual.msssim")


def photo_pair(size, noise=0.05, seed=0):
  """A crop of a real photo and a noisy copy, as float32 NHWC batches of one."""
  height, width = size if isinstance(size, tuple) else (size, size)
  image = skimage.data.astronaut()[100:100 + height, 150:150 + width]
  x = image.astype(np.float32)[None] / 255.0
  rng = np.random.default_rng(seed)
  y = np.clip(x + rng.normal(0.0, noise, x.shape), 0.0, 1.0).astype(np.float32)
  return x, y


@pytest.mark.parametrize("size", [161, (176, 200)])
def test_equals_tf_ssim_multiscale_from_161_px(size):
  x, y = photo_pair(size)
  expected = tf.image.ssim_multiscale(x, y, max_val=1.0)
  np.testing.assert_allclose(perceptual.msssim(x, y), expected, rtol=1e-6)


# Wang, Simoncelli & Bovik (2003), Table 1 (what tf.image.ssim_multiscale uses).
PUBLISHED_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def reference_msssim(x, y):
  """MS-SSIM of one pair of [H, W, C] images in [0, 1], in float64 NumPy/SciPy.

  Written from the definition, independently of perceptual.msssim: an 11x11
  Gaussian window (sigma 1.5) over 'valid' positions, K1 = 0.01, K2 = 0.03;
  between scales an odd side gets its last row or column repeated, then 2x2
  averaging; contrast-structure at every scale but the coarsest, SSIM at the
  coarsest, each clamped at 0 and raised to its weight; mean over channels.
  Small images: as many scales as keep the coarsest one at least as large as
  the window, the first published weights renormalised to sum to one; under
  11 px a single scale whose window is the largest odd size that fits.
  """
  from scipy import signal
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  side = min(x.shape[:2])
  if side < 11:
    window_size, weights = side - (1 - side % 2), np.ones(1)
  else:
    window_size, scales, s = 11, 1, side
    while scales < 5 and -(-s // 2) >= window_size:
      s, scales = -(-s // 2), scales + 1
    weights = np.array(PUBLISHED_WEIGHTS[:scales]) / sum(PUBLISHED_WEIGHTS[:scales])
  coords = np.arange(window_size) - (window_size - 1) / 2
  window = np.exp(-(coords[:, None]**2 + coords[None, :]**2) / (2 * 1.5**2))
  window /= window.sum()
  c1, c2 = 0.01**2, 0.03**2

  def blur(image):
    return np.stack([signal.correlate2d(image[..., c], window, mode="valid")
                     for c in range(image.shape[-1])], axis=-1)

  def downsample(image):
    h, w = image.shape[:2]
    image = np.pad(image, [(0, h % 2), (0, w % 2), (0, 0)], mode="edge")
    return 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] +
                   image[0::2, 1::2] + image[1::2, 1::2])

  factors = []
  for scale, weight in enumerate(weights):
    if scale:
      x, y = downsample(x), downsample(y)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    term = cs if scale < len(weights) - 1 else (
        (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs)
    factors.append(np.maximum(term.mean(axis=(0, 1)), 0.0) ** weight)
  return float(np.mean(np.prod(factors, axis=0)))


@pytest.mark.parametrize("size", [1, 4, 5, 10, 11, 16, 20, 21, 40, 41, (48, 100),
                                  64, 80, 81, (97, 130), 160, 161, (176, 200)])
@pytest.mark.parametrize("noise", [0.03, 0.2])
def test_values_match_an_independent_computation(size, noise):
  """Every number of scales (1-5) and the shrunk windows under 11 px."""
  x, y = photo_pair(size, noise=noise)
  # float32 (TF) against float64: up to 5.5e-5 apart (the variances are
  # differences of nearly equal sums), also at 161 px and more where the
  # value is TF's own. A wrong scale count, weight or padding costs far more.
  np.testing.assert_allclose(perceptual.msssim(x, y)[0],
                             reference_msssim(x[0], y[0]), rtol=1e-4, atol=0)


@pytest.mark.parametrize("side, scales, filter_size", [
    (1, 1, 1), (5, 1, 5), (10, 1, 9), (11, 1, 11), (20, 1, 11), (21, 2, 11),
    (40, 2, 11), (41, 3, 11), (64, 3, 11), (80, 3, 11), (81, 4, 11),
    (128, 4, 11), (160, 4, 11), (161, 5, 11), (512, 5, 11)])
def test_scales_and_filter_size_follow_the_smaller_side(side, scales, filter_size):
  weights, size = msssim_lib.msssim_config(side, 1000)
  assert (len(weights), size) == (scales, filter_size)
  assert msssim_lib.msssim_config(1000, side) == (weights, size)


@pytest.mark.parametrize("side", [21, 41, 81, 160])
def test_fewer_scales_use_the_standard_weights_renormalised(side):
  weights, _ = msssim_lib.msssim_config(side, side)
  assert sum(weights) == pytest.approx(1.0)
  prefix = np.array(msssim_lib.POWER_FACTORS[:len(weights)])
  np.testing.assert_allclose(weights, prefix / prefix.sum(), rtol=1e-12)


def test_full_size_uses_the_published_weights_unchanged():
  assert msssim_lib.msssim_config(161, 161) == (msssim_lib.POWER_FACTORS, 11)


@pytest.mark.parametrize("size", [1, 5, 16, 64, (48, 100), 160])
def test_small_images_give_one_for_identical_and_less_for_noisy(size):
  x, y = photo_pair(size, noise=0.1)
  same = perceptual.msssim(x, x).numpy()
  noisy = perceptual.msssim(x, y).numpy()
  assert same.shape == noisy.shape == (1,)
  np.testing.assert_allclose(same, 1.0, rtol=1e-5)
  assert np.isfinite(noisy).all() and noisy[0] < 0.999


@pytest.mark.parametrize("size", [5, 64])
def test_more_noise_scores_lower(size):
  scores = []
  for noise in (0.02, 0.08, 0.2):
    x, y = photo_pair(size, noise=noise)
    scores.append(float(perceptual.msssim(x, y)[0]))
  assert scores[0] > scores[1] > scores[2]


def test_one_value_per_image_independent_of_the_batch():
  x1, y1 = photo_pair(64, noise=0.03, seed=1)
  x2, y2 = photo_pair(64, noise=0.2, seed=2)
  batch = perceptual.msssim(np.concatenate([x1, x2]), np.concatenate([y1, y2]))
  assert batch.shape == (2,)
  np.testing.assert_allclose(
      batch, [perceptual.msssim(x1, y1)[0], perceptual.msssim(x2, y2)[0]],
      rtol=1e-6)


def test_works_in_a_tf_function_with_static_size_and_rejects_dynamic():
  x, y = photo_pair(64)
  traced = tf.function(perceptual.msssim)
  np.testing.assert_allclose(traced(x, y), perceptual.msssim(x, y), rtol=1e-5)
  dynamic = tf.function(
      perceptual.msssim,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)] * 2)
  with pytest.raises(ValueError, match="static image size"):
    dynamic.get_concrete_function()


def test_msssim_db():
  np.testing.assert_allclose(
      perceptual.msssim_db([0.9, 0.99, 0.999]), [10.0, 20.0, 30.0], rtol=1e-4)


def test_msssim_distortion_is_one_minus_msssim_per_image():
  x, y = photo_pair(32, noise=0.1)
  loss = perceptual.get_distortion("msssim")
  values = loss(np.concatenate([x, x]), np.concatenate([y, x]))
  assert values.shape == (2,)
  np.testing.assert_allclose(values, [1.0 - perceptual.msssim(x, y)[0], 0.0],
                             atol=1e-6)


@pytest.mark.parametrize("name", ["msssim", "mse"])
def test_distortions_reject_unbatched_images(name):
  x, y = photo_pair(16)
  with pytest.raises(ValueError, match=r"rank 4.*x\[None\]"):
    perceptual.get_distortion(name)(x[0], y[0])


@pytest.mark.parametrize("name", ["msssim", "mse"])
def test_distortions_reject_uint8_images(name):
  x, _ = photo_pair(16)
  x_uint8 = (x * 255).astype(np.uint8)
  with pytest.raises(ValueError, match="divide uint8 images by 255"):
    perceptual.get_distortion(name)(x_uint8, x_uint8)


def test_reported_msssim_is_one_traced_function_with_the_numbers_of_dpc_eval():
  """`dpc eval`, `dpc compress` and the training logs report MS-SSIM through
  `perceptual.measure_msssim`: the same numbers in all three, and those of a
  graph traced for the image's own size."""
  from dpc_tf import metrics
  from dpc_tf.evaluation.metrics import Metrics
  x, y = photo_pair((70, 90), noise=0.08)
  a = np.round(x[0] * 255).astype(np.uint8)
  b = np.round(y[0] * 255).astype(np.uint8)

  @tf.function
  def before(x, y):  # dpc_tf.evaluation.metrics' own graph until it was shared.
    value = perceptual.msssim(x, y)
    return value, perceptual.msssim_db(value)

  value, db = (float(v[0]) for v in before(metrics.unit_batch(a), metrics.unit_batch(b)))
  measured = metrics.msssim_and_db(a, b)
  np.testing.assert_allclose(measured, (value, db), rtol=1e-6)
  assert metrics.msssim(a, b) == measured[0]
  in_eval = Metrics(lpips=False)(a, b)
  assert (in_eval["msssim"], in_eval["msssim_db"]) == measured
  # Eager ops give the same value but for the last bits.
  np.testing.assert_allclose(perceptual.msssim(metrics.unit_batch(a),
                                               metrics.unit_batch(b))[0],
                             value, rtol=1e-5)


def test_reported_msssim_traces_once_per_scale_choice_not_per_size():
  """Evaluating photos of many sizes (COCO, a user's folder) must not pay a
  trace per size: one graph per `msssim_config`, with the values of a graph
  traced for each size."""
  before = msssim_lib.measure_msssim_tracing_count()
  sizes = [(170, 200), (200, 170), (181, 233), (240, 161)]  # all five scales
  for size in sizes:
    x, y = photo_pair(size, noise=0.08)
    value, db = perceptual.measure_msssim(x, y)
    # Graph and eager float32 ops differ in the last bits (~4e-6 seen).
    np.testing.assert_allclose(value, tf.image.ssim_multiscale(x, y, 1.0), rtol=1e-5)
    np.testing.assert_allclose(db, perceptual.msssim_db(value), rtol=1e-6)
  assert msssim_lib.measure_msssim_tracing_count() <= before + 1
  # A size that needs fewer scales gets its own graph, with the truncated weights.
  x, y = photo_pair((100, 120), noise=0.08)
  np.testing.assert_allclose(perceptual.measure_msssim(x, y)[0], perceptual.msssim(x, y),
                             rtol=1e-5)
  assert msssim_lib.measure_msssim_tracing_count() <= before + 2
