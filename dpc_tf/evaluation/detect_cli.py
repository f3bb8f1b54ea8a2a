"""`dpc eval-detect`: object-detection accuracy against rate, per codec.

Codes every image of a COCO-format set with our models and classical codecs
(as `dpc eval` does), runs a detector on each decoded image, and measures COCO
mAP@[.5:.95], AP50, AP75 and AP small/medium/large with pycocotools at every
setting, against the mean bpp. Writes points.csv, summary.{json,csv,md},
mAP-vs-bpp plots and BD-rates on mAP (rate saved at equal mAP) into --out.
Rerunning with the same --out resumes.

    dpc eval-detect --instances coco128/instances.json --images coco128/images \\
        --detector ssd_mobilenet_v1_coco/detect.tflite --label-offset 1 \\
        --codecs original,jpeg420,jpeg2000,hevc444 --model dpc=runs/dpc/model \\
        --out results/coco128_detection

The detector's class ids are mapped to the ground truth's category ids as
stated, never guessed: category = class + --label-offset, or, with
--label-map, the name on line (class + --label-offset) of a .txt file (or the
entry of a .json file) matched to the categories' names.
"""

import argparse
import os
import sys

from dpc_tf.evaluation import cli as eval_cli

DEFAULT_CODECS = "original,jpeg420,jpeg2000,webp,hevc444"


def add_arguments(parser):
  """Adds the `dpc eval-detect` arguments to an argparse parser."""
  parser.add_argument("--instances", help="COCO ground truth (instances JSON)")
  parser.add_argument("--images", help="folder of the images named in --instances")
  parser.add_argument(
      "--detector",
      help="a .tflite detection model or a TF Object Detection API SavedModel directory")
  parser.add_argument(
      "--label-offset", type=int, default=None,
      help="required: added to the detector's class ids (e.g. 1 for TF's COCO TFLite "
           "models, whose classes are 0-based; 0 for Object Detection API SavedModels)")
  parser.add_argument(
      "--label-map", default=None,
      help="optional: .txt (line k names class k, after the offset) or .json "
           "({\"k\": category id or name}); names are matched to the categories of "
           "--instances")
  eval_cli.add_codec_arguments(parser, DEFAULT_CODECS)
  # mAP curves are noisy and flatten out as they reach the original's mAP; pchip
  # (monotone) never overshoots between such points, where Akima can.
  parser.set_defaults(bd_method="pchip")
  parser.add_argument("--signature", default="serving_default",
                      help="SavedModel signature of the detector (default serving_default)")
  parser.add_argument("--threads", type=int, default=None,
                      help="TFLite interpreter threads (default: TensorFlow Lite's)")
  parser.add_argument("--input-mean", type=float, default=None,
                      help="float TFLite models only: the model sees (pixel - mean) / std")
  parser.add_argument("--input-std", type=float, default=None,
                      help="float TFLite models only (see --input-mean)")
  parser.add_argument("--max-images", type=int, default=None,
                      help="evaluate only the first N images of --instances (quick runs)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def run(args):
  """Runs `dpc eval-detect`; returns the exit code (0 done, 1 nothing measured, 2 bad input)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    for flag, value in (("--instances", args.instances), ("--images", args.images),
                        ("--detector", args.detector), ("--out", args.out)):
      if not value:
        raise ValueError(f"give {flag}.")
    if args.label_offset is None:
      raise ValueError(
          "give --label-offset (the integer added to the detector's class ids to get the "
          "category ids of --instances, or the line of --label-map): 1 for TF's COCO TFLite "
          "detectors (0-based classes), 0 for Object Detection API SavedModels.")
    if args.max_images is not None and args.max_images < 1:
      raise ValueError(f"--max-images must be at least 1, got {args.max_images}.")
    codecs = eval_cli.build_codecs(args.codecs, args.settings, args.model,
                                   default_codecs=DEFAULT_CODECS.split(","))
    anchor = eval_cli.choose_anchor(args.anchor, codecs)
    from dpc_tf.evaluation import detection, detectors, runner
    ground_truth = detection.CocoGroundTruth(args.instances, args.images)
    class_map = detection.ClassMap(args.label_offset, ground_truth.categories, args.label_map)
    detector = detectors.load_detector(args.detector, signature=args.signature,
                                       num_threads=args.threads, input_mean=args.input_mean,
                                       input_std=args.input_std)
    task = detection.DetectionTask(ground_truth, detector, class_map)
    summary = runner.run(task, ground_truth.paths, codecs, args.out, anchor=anchor,
                         bd_method=args.bd_method, max_images=args.max_images,
                         progress=not args.no_progress)
  except ValueError as error:
    print(f"dpc eval-detect: error: {error}", file=sys.stderr)
    return 2
  from dpc_tf.evaluation.report import print_summary
  return print_summary(summary, args.out)


def main(argv=None):
  """Runs the verb on its own: python -m dpc_tf.evaluation.detect_cli ..."""
  parser = add_arguments(argparse.ArgumentParser(
      prog="dpc eval-detect", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter))
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
