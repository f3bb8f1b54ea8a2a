r"""Builds a zoo entry from a training run: float16 weights, Kodak results, model card.

    python tools/build_zoo.py --name mse --run /work/runs/vr_mse \
        --kodak ../shared/data/kodak --eval_dir results/zoo_eval

Takes the run's final model (`run/model`) or, while it still trains, its
latest backup; stores it as float16 in `dpc_tf/zoo/models/<name>/`; evaluates
*what ships* with `dpc eval` on Kodak next to JPEG 4:2:0, JPEG 2000 and HEVC
4:4:4 (points shared across entries in --eval_dir, so classical codecs are
coded once); and writes `card.json` and `README.md`: architecture, λ per
quality, training data, steps, CPU-hours, learning curve, Kodak figures per
quality, BD-rates, per-image figures that `tests/test_zoo.py` recomputes,
and the fingerprint.
"""

import argparse
import csv
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHECK_IMAGES = ("kodim04.png", "kodim14.png", "kodim23.png")
TRAINING_DATA = ("../shared/data/train: 1 679 photographs (BSDS500, ImageNet, "
                 "Urban100, Sun-Hays80, DIV-like wallpapers, McMaster, Set5/14, "
                 "DICM/LIME); research-use terms, see its SOURCES.md. Never Kodak.")


def read_flags(run_dir):
  flags = {}
  with open(os.path.join(run_dir, "flags.txt")) as f:
    for line in f:
      name, _, value = line.strip().lstrip("-").partition("=")
      if name:
        flags[name] = value
  return flags


def load_run_model(run_dir):
  """(model, optimizer steps, source) from the run's final model or backup."""
  import dpc_tf
  from dpc_tf import training
  final = os.path.join(run_dir, "model")
  if os.path.isdir(final):
    with open(os.path.join(run_dir, "run_summary.json")) as f:
      steps = json.load(f)["optimizer_steps"]
    return dpc_tf.load_model(final), steps, "final model"
  try:
    model, steps = training.load_backup(run_dir)
  except training.TrainingError as e:
    raise SystemExit(str(e)) from None
  return model, steps, "backup"


def learning_curve(run_dir):
  path = os.path.join(run_dir, "learning_curve.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True)
  parser.add_argument("--run", required=True, help="dpc-train output directory")
  parser.add_argument("--kodak", default=os.path.join(REPO, "..", "shared", "data", "kodak"))
  parser.add_argument("--eval_dir", default=os.path.join(REPO, "results", "zoo_eval"))
  parser.add_argument("--notes", default="", help="text for the card (e.g. how it was trained)")
  parser.add_argument("--init_from", default=None,
                      help="what the run started from, in words (default: from "
                           "the run's init_from.json; a run that started from "
                           "zoo:NAME itself continues NAME's card)")
  parser.add_argument("--kodak_images", default=None,
                      help="comma-separated Kodak file names to evaluate (default: "
                           "all 24); must include " + ", ".join(CHECK_IMAGES))
  parser.add_argument("--no_eval", action="store_true",
                      help="write weights and card without the Kodak evaluation")
  args = parser.parse_args()

  import dpc_tf
  from dpc_tf import saving, training as train_lib, zoo
  from dpc_tf.zoo.cards import (ANCHORS, card_markdown, continue_history,
                                curve_progress, learning_rate_schedule,
                               run_hardware)
  from dpc_tf.evaluation import cli as eval_cli, report
  from dpc_tf.evaluation.metrics import Metrics
  from dpc_tf.evaluation.runner import (drop_points, evaluate, output_lock,
                                        read_points)

  model, steps, source = load_run_model(args.run)
  # Read before the build overwrites the entry: the card a continued run
  # started from carries the entry's history.
  init_record = train_lib.read_init_record(args.run) or {}
  previous = init_record.get("card")
  continues = bool(previous) and previous.get("name") == args.name
  if continues and previous.get("config") != model.get_config():
    raise SystemExit(f"{args.run} started from zoo:{args.name} with config "
                     f"{previous.get('config')}, but its model has "
                     f"{model.get_config()}.")
  init_from = args.init_from
  if not init_from and previous and not continues:
    init_from = (f"zoo:{previous['name']} at step {previous['training']['steps']} "
                 f"(fingerprint {init_record['fingerprint']})")
  target = os.path.join(zoo.MODELS_DIR, args.name)
  fingerprint = saving.save_model(model, target, overwrite=True,
                                  weights_dtype="float16")
  shipped = dpc_tf.load_model(target)
  print(f"Saved {args.name} ({source}, {steps} steps) as float16: "
        f"fingerprint {fingerprint}")
  flags = read_flags(args.run)
  curve = learning_curve(args.run)
  training = dict(steps=steps, learning_rate=float(flags.get("learning_rate", 0)),
                  learning_rate_schedule=learning_rate_schedule(flags),
                  init_from=init_from,
                  cpu_hours=(curve[-1]["cpu_hours"] if curve else None))
  try:
    hardware = train_lib.read_hardware_record(args.run)
  except train_lib.TrainingError as e:
    raise SystemExit(str(e)) from None
  if not hardware:
    print(f"{args.run} has no {train_lib.HARDWARE_FILE} (a run from before "
          "dpc-train kept one): the card does not name this phase's machine.")
  if continues:
    training, curve = continue_history(previous, steps, flags, curve,
                                       init_record["fingerprint"], hardware)
  card = dict(
      name=args.name, architecture=shipped.architecture, config=shipped.get_config(),
      distortion=flags.get("distortion"), alpha=flags.get("alpha") or None,
      lpips_trunk=flags.get("lpips_trunk"),
      lmbda_per_quality={str(q + 1): l for q, l in enumerate(shipped.lmbdas)},
      quality_range=list(shipped.quality_range), fingerprint=fingerprint,
      weights="float16 (weights.npz); figures measured on these weights",
      training=dict(data=TRAINING_DATA, source=source,
                    patch_size=int(flags.get("patch_size", 0)),
                    batch_size=int(flags.get("batch_size", 0)),
                    # A continued entry keeps its card's line; its phases
                    # name their machines.
                    hardware=(previous["training"]["hardware"] if continues else
                              run_hardware(hardware) or "not recorded"),
                    **training),
      learning_curve=curve, learning_progress=curve_progress(curve),
      notes=args.notes)

  # The card makes the entry a zoo model (`zoo:NAME` for the evaluation);
  # it is written again with the figures below.
  with open(os.path.join(target, zoo.CARD_FILE), "w") as f:
    json.dump(card, f, indent=2, sort_keys=True)
  if not args.no_eval:
    images = eval_cli.expand_images([args.kodak])
    if args.kodak_images:
      wanted = args.kodak_images.split(",")
      images = [p for p in images if os.path.basename(p) in wanted]
    codecs = eval_cli.build_codecs(",".join(ANCHORS), [], [f"{args.name}=zoo:{args.name}"])
    # Points of an older build of this entry are stale: drop them first. The
    # lock keeps a second build (or dpc eval) on the same folder out from the
    # drop to the last point (two builds at once lost the folder's points).
    points_path = os.path.join(args.eval_dir, "points.csv")
    with output_lock(args.eval_dir):
      drop_points(args.eval_dir, args.name)
      summary = evaluate(images, codecs, args.eval_dir, metrics=Metrics(),
                         anchor="jpeg420")
    rows = summary["rows"]
    metrics = [m for m in ("psnr", "msssim_db", "lpips")
               if any(r.get(m) is not None for r in rows)]
    card["kodak"] = dict(
        images=len(images), image_names=[os.path.basename(p) for p in images],
        per_quality=[{k: r.get(k) for k in ("setting", "bpp", "psnr", "msssim",
                                             "msssim_db", "lpips")}
                     for r in rows if r["codec"] == args.name],
        bd_rate={anchor: {m: report.bd_rates(rows, anchor, [m])[m][args.name]
                          for m in metrics} for anchor in ANCHORS})
    points = [p for p in read_points(points_path) if p["codec"] == args.name
              and os.path.basename(p["image"]) in CHECK_IMAGES]
    card["check_points"] = sorted(
        [dict(image=os.path.basename(p["image"]),
              quality=float(p["setting"].rpartition("@")[2]),
              num_bytes=int(p["num_bytes"]), psnr=float(p["psnr"]),
              msssim=float(p["msssim"]),
              lpips=float(p["lpips"]) if p.get("lpips") not in ("", None) else None)
         for p in points], key=lambda p: (p["image"], p["quality"]))
  with open(os.path.join(target, zoo.CARD_FILE), "w") as f:
    json.dump(card, f, indent=2, sort_keys=True)
  with open(os.path.join(target, "README.md"), "w") as f:
    f.write(card_markdown(card))
  print(card_markdown(card))


if __name__ == "__main__":
  main()
