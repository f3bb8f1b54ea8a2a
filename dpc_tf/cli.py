"""The `dpc` command: compress, decompress, inspect, evaluate.

    dpc compress -m MODEL photo.png               # -> photo.dpc
    dpc compress -m MODEL *.png --out-dir coded/  # many files, progress bar
    dpc decompress -m MODEL photo.dpc -o out.png
    dpc info photo.dpc | MODEL
    dpc models

TensorFlow is imported only by the verbs that need it, so `dpc info` on a
bitstream and `dpc --help` answer at once. Per-file errors are reported and the
other files still processed; the exit code is 1 if any file failed.
"""

import argparse
import importlib
import os
import sys
import time

# Verbs contributed by other modules: each has add_arguments(parser) and
# run(args) -> exit code, and imports TensorFlow only inside run().
_PLUGIN_VERBS = {
    "eval": ("dpc_tf.evaluation.cli",
             "compress images with our models and classical codecs; RD curves"),
    "eval-detect": ("dpc_tf.evaluation.detect_cli",
                    "object-detection accuracy (COCO mAP) on compressed images vs bpp"),
    "lpips-convert": ("perceptual.convert",
                      "convert official LPIPS checkpoints to a Keras weights file"),
}

MODEL_ENV = "DPC_MODEL"
# TensorFlow logs a screenful of C++ noise at import; users can still set it lower.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class CommandError(Exception):
  """A problem with one input, reported without a traceback."""


def _model_argument(parser):
  parser.add_argument(
      "-m", "--model", default=os.environ.get(MODEL_ENV),
      help="a model directory (dpc_tf.save_model / dpc-train) or an exported "
           f"SavedModel; default: ${MODEL_ENV}")


def _output_arguments(parser, what):
  parser.add_argument("-o", "--output",
                      help=f"output file (one input only); default: the input's "
                           f"name with {what}")
  parser.add_argument("--out-dir", help="write outputs into this directory")
  parser.add_argument("-f", "--force", action="store_true",
                      help="overwrite existing outputs")


def _output_path(args, path, suffix):
  if args.output:
    return args.output
  stem = os.path.splitext(os.path.basename(path))[0] + suffix
  directory = args.out_dir if args.out_dir else os.path.dirname(path)
  return os.path.join(directory, stem)


def _load_codec(args):
  if not args.model:
    raise CommandError(f"no model given: pass -m MODEL or set ${MODEL_ENV}.")
  from dpc_tf import codec, saving
  try:
    return codec.load_codec(args.model)
  except (saving.ModelFileError, OSError) as e:
    raise CommandError(str(e)) from None


def _check_outputs(args):
  if args.output and len(args.inputs) > 1:
    raise CommandError("-o/--output takes one input; use --out-dir for several.")
  if args.out_dir:
    os.makedirs(args.out_dir, exist_ok=True)


def _progress(items, desc):
  from tqdm import tqdm
  # A bar only for several files; a single file prints its own line.
  return tqdm(items, desc=desc, unit="file", disable=len(items) < 2,
              file=sys.stderr, dynamic_ncols=True)


def _for_each(args, desc, work):
  """Runs work(path) -> message for each input; reports errors, counts failures."""
  from tqdm import tqdm
  failures = 0
  for path in _progress(args.inputs, desc):
    try:
      tqdm.write(work(path))
    except Exception as e:  # Reported per file: one bad file must not stop a batch.
      failures += 1
      tqdm.write(f"dpc {desc}: error: {path}: {_message(e)}", file=sys.stderr)
  if len(args.inputs) > 1:
    print(f"{len(args.inputs) - failures} of {len(args.inputs)} files done"
          + (f", {failures} failed" if failures else "") + ".", file=sys.stderr)
  return 1 if failures else 0


def _message(error):
  text = str(error) or type(error).__name__
  return text.splitlines()[0] if len(text) > 400 else text


def _run_compress(args):
  _check_outputs(args)
  codec = _load_codec(args)
  from dpc_tf import images

  def work(path):
    image = images.read_image(path)
    start = time.perf_counter()
    data = codec.encode(image)
    seconds = time.perf_counter() - start
    out = _output_path(args, path, ".dpc")
    images.write_atomic(out, lambda f: f.write(data), overwrite=args.force)
    height, width, _ = image.shape
    line = (f"{path} -> {out}: {width}x{height}, {len(data)} bytes, "
            f"{8 * len(data) / (height * width):.4f} bpp, {seconds:.2f} s")
    if args.metrics:
      line += ", " + _quality(image, codec.decode(data))
    return line

  return _for_each(args, "compress", work)


def _quality(image, decoded):
  from dpc_tf import metrics
  a = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
  b = decoded[..., :a.shape[-1]]
  psnr = metrics.psnr(a, b)
  line = f"PSNR {psnr:.2f} dB"
  if a.shape[-1] == 3:
    ms = metrics.msssim(a, b)
    line += f", MS-SSIM {ms:.4f} ({metrics.msssim_db(ms):.2f} dB)"
  return line


def _run_decompress(args):
  _check_outputs(args)
  codec = _load_codec(args)
  from dpc_tf import images

  def work(path):
    with open(path, "rb") as f:
      data = f.read()
    start = time.perf_counter()
    image = codec.decode(data)
    seconds = time.perf_counter() - start
    out = _output_path(args, path, ".png")
    images.write_image(out, image, overwrite=args.force)
    height, width, _ = image.shape
    return (f"{path} -> {out}: {width}x{height}, "
            f"{8 * len(data) / (height * width):.4f} bpp, {seconds:.2f} s")

  return _for_each(args, "decompress", work)


def _run_info(args):
  failures = 0
  for path in args.inputs:
    try:
      print(_info(path))
    except Exception as e:
      failures += 1
      print(f"dpc info: error: {path}: {_message(e)}", file=sys.stderr)
  return 1 if failures else 0


def _info(path):
  from dpc_tf import container, saving
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, saving.MODEL_FILE)):
      meta = saving.read_model_info(path)
      config = ", ".join(f"{k}={v}" for k, v in sorted(meta["config"].items()))
      model_id = (f"{meta['architecture']}/"
                  f"{saving.config_hash(meta['architecture'], meta['config'])}/"
                  f"{meta['fingerprint']}")
      return (f"{path}: dpc_tf model\n  architecture: {meta['architecture']}\n"
              f"  config: {config}\n  id: {model_id}")
    from dpc_tf import serving
    return serving.describe(path)
  with open(path, "rb") as f:
    data = f.read()
  stream = container.unpack(data)
  h = stream.header
  kinds = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}
  sizes = ", ".join(str(len(s)) for s in stream.strings)
  return (f"{path}: dpc bitstream v{container.FORMAT_VERSION}\n"
          f"  model: {h.model_id}\n"
          f"  image: {h.width}x{h.height} {kinds[h.channels]}\n"
          f"  size: {len(data)} bytes, {8 * len(data) / (h.height * h.width):.4f} bpp "
          f"(strings: {sizes}; alpha: {len(stream.alpha)})")


def _run_models(args):
  from dpc_tf.models import registry, model_class
  for name in registry.available_models():
    doc = (model_class(name).__doc__ or "").strip().splitlines()[0]
    print(f"{name:24s} {doc}")
  return 0


def run_absl_program(main, doc):
  """Runs an absl program (`dpc-train`, `dpc-export`) with `doc` as its --help."""
  from absl import app
  # absl prints the __main__ module's docstring for --help; under `python -m`
  # or a console script that is a stub, so show the program's instead.
  sys.modules["__main__"].__doc__ = doc
  app.run(main)


def build_parser():
  parser = argparse.ArgumentParser(
      prog="dpc", description="Deep Perceptual Compression: learned image codecs.")
  sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

  p = sub.add_parser("compress", help="compress images to .dpc bitstreams")
  p.add_argument("inputs", nargs="+", metavar="IMAGE")
  _model_argument(p)
  _output_arguments(p, ".dpc")
  p.add_argument("--metrics", action="store_true",
                 help="also decode and report PSNR and MS-SSIM")
  p.set_defaults(run=_run_compress)

  p = sub.add_parser("decompress", help="decompress .dpc bitstreams to PNG")
  p.add_argument("inputs", nargs="+", metavar="FILE.dpc")
  _model_argument(p)
  _output_arguments(p, ".png")
  p.set_defaults(run=_run_decompress)

  p = sub.add_parser("info", help="describe bitstreams or models")
  p.add_argument("inputs", nargs="+", metavar="FILE_OR_MODEL")
  p.set_defaults(run=_run_info)

  p = sub.add_parser("models", help="list the registered architectures")
  p.set_defaults(run=_run_models)

  for verb, (module, help_text) in _PLUGIN_VERBS.items():
    plugin = importlib.import_module(module)
    p = sub.add_parser(verb, help=help_text, description=plugin.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    plugin.add_arguments(p)
    p.set_defaults(run=plugin.run)
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    return args.run(args)
  except CommandError as e:
    print(f"dpc {args.verb}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == "__main__":
  sys.exit(main())
