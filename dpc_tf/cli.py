"""The `dpc` command: compress, decompress, inspect, evaluate.

    dpc compress photo.png                        # -> photo.dpc (zoo model "dpc")
    dpc compress photo.png --bpp 0.3              # rate control
    dpc compress -m MODEL photo.png --quality 2   # -> photo.dpc
    dpc compress -m MODEL *.png --out-dir coded/  # many files, progress bar
    dpc decompress -m MODEL photo.dpc -o out.png
    dpc info photo.dpc | MODEL
    dpc models

TensorFlow is imported only by the verbs that need it, so `dpc info` on a
bitstream and `dpc --help` answer at once. Per-file errors are reported and the
other files still processed. Exit codes: 0 done, 1 some file failed, 2 a usage
error (no model, a bad model path, outputs that cannot be written).

Outputs never replace an input of the same command (not even with --force), two
inputs never share an output, and every output is checked before any work.
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
    "study": ("dpc_tf.study.cli",
              "a 2AFC human study of codecs: create, serve (web app), report"),
}

MODEL_ENV = "DPC_MODEL"
DECODED_SUFFIX = ".decoded.png"  # photo.dpc -> photo.decoded.png
# TensorFlow logs a screenful of C++ noise at import; users can still set it lower.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class CommandError(Exception):
  """A problem with one input, reported without a traceback."""


def _model_argument(parser):
  parser.add_argument(
      "-m", "--model", default=os.environ.get(MODEL_ENV),
      help="a model directory (dpc_tf.save_model), a dpc-train run directory, "
           "an exported SavedModel, or zoo:NAME (`dpc models`); default: "
           f"${MODEL_ENV}, else zoo:dpc (compress) or the zoo model that made "
           "the file (decompress)")


def _output_arguments(parser, what):
  parser.add_argument("-o", "--output",
                      help=f"output file (one input only); default: the input's "
                           f"name with {what}")
  parser.add_argument("--out-dir", help="write outputs into this directory")
  parser.add_argument("-f", "--force", action="store_true",
                      help="overwrite existing outputs (never an input of "
                           "the same command)")


def _output_path(args, path, suffix):
  if args.output:
    return args.output
  stem = os.path.splitext(os.path.basename(path))[0] + suffix
  directory = args.out_dir if args.out_dir else os.path.dirname(path)
  return os.path.join(directory, stem)


def _load_codec(model):
  from dpc_tf import files
  try:
    files.resolve_model(model)  # Before importing TensorFlow: fails fast.
    from dpc_tf import loading
    return loading.load_codec(model)
  except (files.ModelFileError, OSError) as e:
    raise CommandError(str(e)) from None


def _zoo_model_of(header):
  """`zoo:NAME` of the shipped model that made a bitstream (no TensorFlow)."""
  from dpc_tf import files, zoo
  names = zoo.list_models()
  for name in names:
    if zoo.model_card(name).get("fingerprint") == header.fingerprint.hex():
      return files.ZOO_PREFIX + name
  raise CommandError(
      f"the bitstream was made by model {header.model_id}, which is not in the "
      f"zoo ({', '.join(names) or 'empty'}): pass -m MODEL (the model that "
      "encoded it) or set $DPC_MODEL.")


def _plan_outputs(args, suffix):
  """{input: output path}, after checking every output can be written.

  Refuses, before any work: -o with several inputs, -o naming a directory or
  a missing folder, --out-dir naming a file, two inputs with one output, and
  an output that is an input (never overwritten, even with --force).
  """
  if args.output and len(args.inputs) > 1:
    raise CommandError("-o/--output takes one input; use --out-dir for several.")
  if args.output:
    if os.path.isdir(args.output):
      raise CommandError(f"-o {args.output} is a directory; give a file name, "
                         f"or use --out-dir {args.output}.")
    folder = os.path.dirname(args.output) or "."
    if not os.path.isdir(folder):
      raise CommandError(f"-o {args.output}: the folder {folder} does not exist; "
                         "create it first, or use --out-dir (which is created).")
  if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
    raise CommandError(f"--out-dir {args.out_dir} is a file, not a directory.")
  outputs, writers = {}, {}
  inputs = {os.path.realpath(path): path for path in args.inputs}
  for path in args.inputs:
    out = _output_path(args, path, suffix)
    key = os.path.realpath(out)
    if key in writers:
      raise CommandError(
          f"{writers[key]} and {path} would both be written to {out}; give them "
          "distinct names, or code them in separate commands or --out-dirs.")
    if key in inputs:
      raise CommandError(
          f"{out} is an input of this command and would be overwritten by the "
          f"output of {path}; inputs are never overwritten, even with --force. "
          "Choose another -o or --out-dir.")
    writers[key] = path
    outputs[path] = out
  return outputs


def _make_out_dir(args):
  if args.out_dir:
    try:
      os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
      raise CommandError(f"--out-dir {args.out_dir} cannot be created: "
                         f"{e.strerror}.") from None


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
  if args.quality is not None and args.bpp is not None:
    raise CommandError("give --quality or --bpp, not both.")
  outputs = _plan_outputs(args, ".dpc")
  from dpc_tf import files, zoo
  codec = _load_codec(args.model or files.ZOO_PREFIX + zoo.DEFAULT)
  from dpc_tf import container, images
  model = codec.model
  if not model.variable_rate and (args.quality is not None or args.bpp is not None):
    raise CommandError(f"{args.model} is a fixed-rate model: --quality and --bpp "
                       "need a variable-rate one (e.g. the zoo's).")
  quality = args.quality
  if model.variable_rate and args.bpp is None:
    quality = model.default_quality if quality is None else quality
    try:
      quality = model.check_quality(quality)
    except container.QualityError as e:
      raise CommandError(str(e)) from None
  _make_out_dir(args)

  def work(path):
    out = outputs[path]
    files.check_writable_target(out, overwrite=args.force)  # Before the work.
    image = images.read_image(path)
    start = time.perf_counter()
    note = ""
    if args.bpp is not None:
      result = codec.encode_at_bpp(image, args.bpp)
      data, note = result.data, f", {result.describe()}"
    else:
      data = codec.encode(image, quality=quality)
      note = "" if quality is None else f", quality {quality:g}"
    seconds = time.perf_counter() - start
    files.write_atomic(out, lambda f: f.write(data), overwrite=args.force)
    height, width, _ = image.shape
    line = (f"{path} -> {out}: {width}x{height}, {len(data)} bytes, "
            f"{8 * len(data) / (height * width):.4f} bpp{note}, {seconds:.2f} s")
    if args.metrics:
      line += ", " + _quality(image, codec.decode(data))
    return line

  return _for_each(args, "compress", work)


def _quality(image, decoded):
  from dpc_tf import metrics
  a = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
  b = decoded[..., :a.shape[-1]]
  psnr = metrics.psnr(a, b)
  ms, ms_db = metrics.msssim_and_db(a, b)
  return f"PSNR {psnr:.2f} dB, MS-SSIM {ms:.4f} ({ms_db:.2f} dB)"


def _max_pixels(text):
  if text.lower() == "none":
    return None
  try:
    value = int(float(text))
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(
        f"--max-pixels takes a positive number of pixels or 'none', got {text!r}")
  return value


def _decoder(args, model):
  """decode(bytes) -> image with `model`: in a worker process with a time
  budget (default), or in this process with --in-process."""
  if args.in_process:
    if args.timeout is not None:
      raise CommandError("--timeout needs the decoder process; drop --in-process.")
    codec = _load_codec(model)
    return lambda data: codec.decode(data, max_pixels=args.max_pixels)
  from dpc_tf import files, isolation
  try:
    files.resolve_model(model)  # A clear error before starting a worker.
  except files.ModelFileError as e:
    raise CommandError(str(e)) from None
  # This process never imports TensorFlow: the worker loads the model.
  decoder = isolation.DecoderProcess(model)
  try:
    decoder.wait_ready()
  except isolation.DecoderStartError as e:
    raise CommandError(str(e)) from None
  return lambda data: decoder.decode(data, max_pixels=args.max_pixels,
                                     timeout=args.timeout)


def _run_decompress(args):
  # Not `photo.png`: that is likely the original the bitstream was made from.
  outputs = _plan_outputs(args, DECODED_SUFFIX)
  decoders = {}
  if args.model:
    decoders[None] = _decoder(args, args.model)
  _make_out_dir(args)
  from dpc_tf import container, files, images

  def decoder_for(data):
    if args.model:
      return decoders[None]
    # No model given: the zoo model the bitstream names in its header.
    model = _zoo_model_of(container.unpack(data, args.max_pixels).header)
    if model not in decoders:
      decoders[model] = _decoder(args, model)
    return decoders[model]

  def work(path):
    out = outputs[path]
    files.check_writable_target(out, overwrite=args.force)  # Before the work.
    with open(path, "rb") as f:
      data = f.read()
    decode = decoder_for(data)
    start = time.perf_counter()
    image = decode(data)
    seconds = time.perf_counter() - start
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
  # Only the container module for a bitstream: `saving` (and so TensorFlow,
  # ~5 s) is imported for model directories alone.
  from dpc_tf import container, files
  if os.path.isdir(path):
    kind, directory = files.resolve_model(path)
    if kind == "model":
      from dpc_tf import saving
      meta = saving.read_model_info(directory)
      config = ", ".join(f"{k}={v}" for k, v in sorted(meta["config"].items()))
      model_id = (f"{meta['architecture']}/"
                  f"{saving.config_hash(meta['architecture'], meta['config'])}/"
                  f"{meta['fingerprint']}")
      where = path if directory == path else f"{path} (a dpc-train run: {directory})"
      return (f"{where}: dpc_tf model\n  architecture: {meta['architecture']}\n"
              f"  config: {config}\n  id: {model_id}")
    from dpc_tf import serving
    return serving.describe(path)
  if not os.path.exists(path):
    raise FileNotFoundError("does not exist.")
  with open(path, "rb") as f:
    data = f.read()
  stream = container.unpack(data)
  h = stream.header
  kinds = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}
  sizes = ", ".join(str(len(s)) for s in stream.strings)
  try:
    zoo_name = f" (zoo model {_zoo_model_of(h)[4:]})"
  except CommandError:
    zoo_name = ""
  quality = f"  quality: {h.quality:g}\n" if h.quality else ""
  return (f"{path}: dpc bitstream v{data[4]}\n"
          f"  model: {h.model_id}{zoo_name}\n{quality}"
          f"  image: {h.width}x{h.height} {kinds[h.channels]}\n"
          f"  size: {len(data)} bytes, {8 * len(data) / (h.height * h.width):.4f} bpp "
          f"(strings: {sizes}; alpha: {len(stream.alpha)})")


def _run_models(args):
  from dpc_tf import zoo
  print("Trained models (dpc_tf.zoo; -m zoo:NAME, default zoo:dpc):")
  for name in zoo.list_models():
    card = zoo.model_card(name)
    low, high = card["quality_range"]
    kodak = card.get("kodak", {}).get("per_quality", [])
    rates = (f", Kodak {kodak[0]['bpp']:.2f}-{kodak[-1]['bpp']:.2f} bpp"
             if kodak else "")
    print(f"  {name:10s} {card['architecture']}, trained on {card['distortion']}, "
          f"quality {low:g}-{high:g}{rates}")
  from dpc_tf.models import registry, model_class
  print("Architectures (dpc-train --arch):")
  for name in registry.available_models():
    doc = (model_class(name).__doc__ or "").strip().splitlines()[0]
    print(f"  {name:24s} {doc}")
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
  p.add_argument("-q", "--quality", type=float,
                 help="variable-rate models: quality from 1 (lowest rate) to the "
                      "number of trained λ, any value in between (default: the "
                      "middle)")
  p.add_argument("--bpp", type=float,
                 help="variable-rate models: target bits per pixel; the quality "
                      "is searched to within 3%% (or the closest reachable)")
  p.add_argument("--metrics", action="store_true",
                 help="also decode and report PSNR and MS-SSIM (of the gray "
                      "plane for gray images)")
  p.set_defaults(run=_run_compress)

  p = sub.add_parser("decompress", help="decompress .dpc bitstreams to PNG")
  p.add_argument("inputs", nargs="+", metavar="FILE.dpc")
  _model_argument(p)
  _output_arguments(p, DECODED_SUFFIX)
  from dpc_tf import container
  p.add_argument(
      "--max-pixels", type=_max_pixels, default=container.DEFAULT_MAX_PIXELS,
      metavar="N", help="refuse bitstreams declaring more pixels (decompression "
      f"bombs); default {container.DEFAULT_MAX_PIXELS} (twice Pillow's "
      "MAX_IMAGE_PIXELS); 'none' for no limit")
  p.add_argument(
      "--timeout", type=float, metavar="SECONDS",
      help="time budget per file (default 30 s + 30 s per megapixel); a file "
      "that takes longer is reported as damaged or crafted and the decoder "
      "process is restarted")
  p.add_argument(
      "--in-process", action="store_true",
      help="decode in this process, without a time budget: only for files you "
      "trust (a crafted file can hang tensorflow-compression's range decoder)")
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
