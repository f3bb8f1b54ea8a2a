r"""Exports a trained codec as SavedModels laid out for TF Serving.

    dpc-export --model_dir=runs/hp/model --export_dir=serving --name=hp

writes serving/hp/<version>/ (signatures compress, decompress, latents,
from_latents; needs tensorflow-compression's ops) and serving/hp_core/<version>/
(latents and from_latents in core TensorFlow ops: stock TF Serving loads it).
In a checkout: `python -m export ...`. Inspect the result with
`dpc info serving/hp`; use it with `dpc compress -m serving/hp photo.png`.
See docs/train_export.md.
"""

import os
import sys

# TensorFlow logs a screenful of C++ noise at import; users can still set it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from dpc_tf import cli
from dpc_tf import saving
from dpc_tf import serving

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None,
                    "The trained model: a dpc_tf model directory (dpc-train's "
                    "output_dir/model, or output_dir itself).")
flags.DEFINE_string("export_dir", None,
                    "Base directory of the exported models (TF Serving's "
                    "--model_base_path without the model name).")
flags.DEFINE_string("name", "dpc", "Model name: the SavedModels go to "
                    "<export_dir>/<name>/<version> and <export_dir>/<name>_core/<version>.")
flags.DEFINE_integer("version", None,
                     "Integer version (default: the next free one).")
flags.DEFINE_bool("core", True,
                  "Also export the core-op SavedModel (--nocore: only the full one).")
flags.DEFINE_bool("overwrite", False, "Replace existing version directories.")
flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # TensorFlow's INFO lines about traced captures are noise here.
  tf.get_logger().setLevel("WARNING")
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    # A model directory or a dpc-train run (files.resolve_model).
    model = saving.load_model(FLAGS.model_dir)
    paths = serving.export(model, FLAGS.export_dir, FLAGS.name,
                           version=FLAGS.version, core=FLAGS.core,
                           overwrite=FLAGS.overwrite)
  except (saving.ModelFileError, FileExistsError, ValueError) as e:
    print(f"dpc-export: error: {e}", file=sys.stderr)
    return 1
  finally:
    logging.set_verbosity(verbosity)
  logging.info("Exported version %d.", paths["version"])
  for kind in ("full", "core"):
    if paths[kind]:
      print(serving.describe(paths[kind]))
  return 0


def run():
  """Entry point of the `dpc-export` command."""
  cli.run_absl_program(main, __doc__)


if __name__ == "__main__":
  run()
