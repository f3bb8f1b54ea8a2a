"""The shipped model zoo: loads, matches its cards, and its figures hold."""

import os
import shutil

import numpy as np
import pytest

import dpc_tf
from dpc_tf import zoo
from dpc_tf.zoo import cards

KODAK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "..", "shared", "data", "kodak")
EXPECTED = {"dpc", "msssim", "mse"}


def test_the_zoo_ships_its_three_models_within_budget():
  assert set(zoo.list_models()) == EXPECTED
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(zoo.MODELS_DIR) for name in names)
  assert size <= 80 * 2**20, f"the zoo is {size / 2**20:.1f} MB"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_model_loads_and_matches_its_card(name):
  card = zoo.model_card(name)
  model = zoo.load_model(name)
  assert model.variable_rate
  assert card["architecture"] == model.architecture
  assert card["config"] == model.get_config()
  assert card["quality_range"] == list(model.quality_range)
  assert card["distortion"] == name
  for key in ("training", "lmbda_per_quality", "fingerprint"):
    assert card[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_card_figures_are_what_the_shipped_weights_give(name):
  if not os.path.isdir(KODAK):
    pytest.skip(f"Kodak images not found at {KODAK} (../shared/data/kodak)")
  card = zoo.model_card(name)
  if not card.get("check_points"):
    pytest.fail(f"the card of {name!r} has no check points: rebuild it with "
                "tools/build_zoo.py")
  from dpc_tf import images, metrics
  codec = zoo.load_codec(name)
  lpips = None
  for point in card["check_points"][::2]:
    image = images.read_image(os.path.join(KODAK, point["image"]))
    data = codec.encode(image, quality=point["quality"])
    decoded = codec.decode(data)
    # Same machine kind: the same bytes (a little slack for another CPU's
    # rounding of the entropy model's indexes).
    assert abs(len(data) - point["num_bytes"]) <= 0.005 * point["num_bytes"]
    assert metrics.psnr(image, decoded) == pytest.approx(point["psnr"], abs=0.02)
    assert metrics.msssim(image, decoded) == pytest.approx(point["msssim"], abs=1e-3)
    if point.get("lpips") is not None:
      import perceptual
      lpips = lpips or perceptual.LPIPS("alex")
      x = np.asarray(image, np.float32)[None] / 255
      y = np.asarray(decoded, np.float32)[None] / 255
      assert float(lpips(x, y)[0]) == pytest.approx(point["lpips"], abs=2e-3)


def test_a_damaged_zoo_model_is_refused(tmp_path, monkeypatch):
  name = sorted(zoo.list_models())[0]
  shutil.copytree(zoo.MODELS_DIR, tmp_path / "models")
  monkeypatch.setattr(zoo, "MODELS_DIR", str(tmp_path / "models"))
  weights = tmp_path / "models" / name / "weights.npz"
  arrays = dict(np.load(weights))
  arrays["v0000"] = arrays["v0000"] + np.float16(0.01)
  np.savez_compressed(weights, **arrays)
  with pytest.raises(zoo.ZooError, match="damaged"):
    zoo.load_model(name)
  with pytest.raises(zoo.ZooError, match="No zoo model 'nope'"):
    zoo.load_model("nope")


def test_eval_takes_zoo_models_at_chosen_qualities():
  # `--model NAME=zoo:dpc@2.5,...` is how the README adds zoo rows to a
  # detection or Kodak evaluation; the path check must look past `@Q`.
  from dpc_tf.evaluation import cli as eval_cli  # pylint: disable=import-outside-toplevel
  (codec,) = eval_cli.build_codecs("none", [], ["dpc=zoo:dpc@1,zoo:dpc@2.5"])
  assert codec.settings == ["zoo:dpc@1", "zoo:dpc@2.5"]
  with pytest.raises(ValueError, match="No zoo model 'nothing'"):
    eval_cli.build_codecs("none", [], ["x=zoo:nothing@1"])


def _curve(steps, hours, lpips):
  return [dict(step=float(s), cpu_hours=h, quality=float(q), bpp=0.1 * q,
               psnr=20.0 + q, msssim=0.9, msssim_db=10.0 + q, lpips=l / q)
          for s, h, l in zip(steps, hours, lpips) for q in (1, 2, 3)]


def test_a_run_that_continues_an_entry_carries_its_history():
  # A new session fine-tunes zoo:dpc from its shipped weights: the card goes
  # on counting steps and CPU-hours, and its progress spans the join.
  previous = dict(name="dpc", learning_curve=_curve([500, 1000], [0.5, 1.0], [0.4, 0.3]),
                  training=dict(steps=1000, cpu_hours=1.0, learning_rate=2e-4,
                                init_from="the mse run at step 100",
                                learning_rate_schedule=dict(schedule="step",
                                                            boundaries=[600],
                                                            decay_factor=0.1)))
  flags = dict(learning_rate="2e-4", lr_schedule="step", lr_boundaries="300",
               lr_decay_factor="0.1", lr_warmup_steps="100",
               precision_policy="mixed_bfloat16")
  training, curve = cards.continue_history(
      previous, 400, flags, _curve([200, 400], [0.2, 0.4], [0.25, 0.2]), "abc")
  assert training["steps"] == 1400 and training["cpu_hours"] == pytest.approx(1.4)
  assert training["init_from"] == "the mse run at step 100"
  assert training["learning_rate_schedule"]["boundaries"] == [1300]
  assert [p["steps"] for p in training["phases"]] == [[0, 1000], [1000, 1400]]
  assert "fingerprint abc" in training["phases"][1]["init_from"]
  assert sorted({int(r["step"]) for r in curve}) == [500, 1000, 1200, 1400]
  progress = cards.curve_progress(curve)
  assert [(p["from_step"], p["to_step"]) for p in progress] == [
      (500, 1000), (1000, 1200), (1200, 1400)]
  assert progress[1]["cpu_hours"] == pytest.approx(0.2)
  assert progress[1]["bd_rate"]["lpips"] < 0  # 0.3 -> 0.25 at equal bpp: better.
  card = dict(name="dpc", architecture="a", config={"b": 1, "a": 2},
              distortion="mse", fingerprint="f", training=dict(
                  training, batch_size=8, patch_size=128, hardware="h", data="d"),
              learning_curve=curve, learning_progress=progress)
  text = cards.card_markdown(card)
  assert training["learning_rate_schedule"]["warmup_steps"] == 100
  assert ("- steps 1000–1400: learning rate 0.0002 after a 100-step linear "
          "warmup, ×0.1 at step 1300, mixed_bfloat16 training") in text
  assert "- steps 0–1000: learning rate 0.0002, ×0.1 at step 600; from" in text
  assert "(a=2, b=1)" in text


def test_a_continued_phase_names_its_machines_and_cosine_schedule():
  previous = dict(name="dpc", learning_curve=_curve([1000], [1.0], [0.3]),
                  training=dict(steps=1000, cpu_hours=1.0, learning_rate=2e-4,
                                init_from=None, learning_rate_schedule=None))
  flags = dict(learning_rate="2e-4", lr_schedule="cosine", lr_decay_steps="2000",
               lr_final_fraction="0.05")
  # Resumed twice: on the same machine (one entry), then on another.
  hardware = [dict(from_step=0, hardware="A"), dict(from_step=250, hardware="A"),
              dict(from_step=500, hardware="B")]
  training, _ = cards.continue_history(
      previous, 750, flags, _curve([750], [0.75], [0.25]), "abc", hardware)
  phase = training["phases"][-1]
  assert phase["hardware"] == "A from step 1000, B from step 1500"
  assert phase["learning_rate_schedule"] == dict(
      schedule="cosine", decay_steps=2000, final_fraction=0.05)
  assert cards._schedule_text(phase) == (
      "learning rate 0.0002, cosine decay over 2000 steps to ×0.05, on A from "
      "step 1000, B from step 1500")
  assert cards.run_hardware(hardware[:2]) == "A"
  assert cards.run_hardware(None) is None
  # A run from before the record: the phase claims no machine.
  training, _ = cards.continue_history(previous, 750, flags, [], "abc")
  assert "hardware" not in training["phases"][-1]


def test_a_phase_with_larger_crops_keeps_each_phases_crops():
  # A phase may train on other crops than the ones before it: the card must
  # not claim the new size for all its steps.
  previous = dict(name="mse", learning_curve=_curve([1000], [1.0], [0.3]),
                  training=dict(steps=1000, cpu_hours=1.0, learning_rate=2e-4,
                                init_from=None, learning_rate_schedule=None,
                                batch_size=8, patch_size=128))
  flags = dict(learning_rate="2e-4", batch_size="4", patch_size="256")
  training, curve = cards.continue_history(
      previous, 500, flags, _curve([500], [0.5], [0.25]), "abc")
  assert [(p["batch_size"], p["patch_size"]) for p in training["phases"]] == [
      (8, 128), (4, 256)]
  card = dict(name="mse", architecture="a", config={}, distortion="mse",
              fingerprint="f", learning_curve=curve, training=dict(
                  training, batch_size=4, patch_size=256, hardware="h", data="d"))
  text = cards.card_markdown(card)
  assert "Training: 1500 steps (batch and crop size per phase below)" in text
  assert "- steps 0–1000: batch 8 × 128² crops, learning rate" in text
  assert "- steps 1000–1500: batch 4 × 256² crops, learning rate" in text
  # The same crops again: said once, in the header.
  flags.update(batch_size="8", patch_size="128")
  training, _ = cards.continue_history(previous, 500, flags, [], "abc")
  card["training"] = dict(training, batch_size=8, patch_size=128, hardware="h",
                          data="d")
  text = cards.card_markdown(card)
  assert "steps of batch 8 × 128² crops" in text and "- steps 0–1000: learning" in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_card_readme_is_its_card(name):
  # The README is rendered from card.json, whatever order the JSON keeps.
  card = zoo.model_card(name)
  with open(os.path.join(zoo.model_dir(name), "README.md")) as f:
    assert f.read() == cards.card_markdown(card)
  card["config"] = dict(reversed(list(card["config"].items())))
  card["kodak"]["bd_rate"] = dict(reversed(list(card["kodak"]["bd_rate"].items())))
  with open(os.path.join(zoo.model_dir(name), "README.md")) as f:
    assert f.read() == cards.card_markdown(card)


RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "tools", "zoo_runs")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_entry_has_a_flagfile_that_continues_it(name):
  # tools/zoo_runs/NAME.txt trains NAME on from its shipped weights: it must
  # build the card's model with the card's loss, or the build would not fit.
  from absl import flags
  from train import main as train_main
  card = zoo.model_card(name)
  try:
    flags.FLAGS(["dpc-train", f"--flagfile={os.path.join(RECIPES, name + '.txt')}",
                 "--output_dir=unused"])
    config = train_main.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.init_from == f"zoo:{name}"
  assert config.arch == card["architecture"]
  assert config.distortion == card["distortion"]
  assert [float(l) for l in config.lmbdas] == card["config"]["lmbdas"]
  for key in ("num_filters", "latent_depth", "hyperprior_depth"):
    assert getattr(config, key) == card["config"][key], key
  assert (config.patch_size, config.batch_size) == (
      card["training"]["patch_size"], card["training"]["batch_size"])
  if card["alpha"]:
    assert config.alpha == float(card["alpha"])
  assert config.learning_rate > 0 and config.curve_glob
