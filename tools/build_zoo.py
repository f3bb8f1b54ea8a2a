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

ANCHORS = ("jpeg420", "jpeg2000", "hevc444")
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


def learning_rate_schedule(flags):
  """The run's schedule as its flags give it (a resumed run may change it)."""
  schedule = flags.get("lr_schedule") or "constant"
  if schedule == "step":
    return dict(schedule=schedule, boundaries=[
        int(b) for b in flags.get("lr_boundaries", "").split(",") if b],
                decay_factor=float(flags.get("lr_decay_factor", 0.1)))
  if schedule == "cosine":
    return dict(schedule=schedule, decay_steps=flags.get("lr_decay_steps") or None,
                final_fraction=float(flags.get("lr_final_fraction", 0.01)))
  return dict(schedule=schedule)


def learning_curve(run_dir):
  path = os.path.join(run_dir, "learning_curve.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)]


CURVE_METRICS = (("psnr", True), ("msssim_db", True), ("lpips", False))


def curve_progress(curve):
  """BD-rate of each learning-curve point against the one before, per metric,
  and per CPU-hour between them: the issue's test of a flattened curve is
  under 1 % per CPU-hour (or 0.1 dB)."""
  from dpc_tf.evaluation import bdrate
  by_step = {}
  for row in curve:
    by_step.setdefault(int(row["step"]), []).append(row)
  steps = sorted(by_step)
  progress = []
  for before, after in zip(steps, steps[1:]):
    a, b = by_step[before], by_step[after]
    hours = (b[0]["cpu_hours"] or 0) - (a[0]["cpu_hours"] or 0)
    entry = dict(from_step=before, to_step=after, cpu_hours=hours, bd_rate={},
                 bd_rate_per_cpu_hour={})
    for metric, higher_is_better in CURVE_METRICS:
      if any(r.get(metric) is None for r in a + b):
        continue
      value = bdrate.bd_rate([r["bpp"] for r in a], [r[metric] for r in a],
                             [r["bpp"] for r in b], [r[metric] for r in b],
                             higher_is_better=higher_is_better).bd_rate
      if value == value:  # not NaN
        entry["bd_rate"][metric] = value
        if hours > 0:
          entry["bd_rate_per_cpu_hour"][metric] = value / hours
    progress.append(entry)
  return progress


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True)
  parser.add_argument("--run", required=True, help="dpc-train output directory")
  parser.add_argument("--kodak", default=os.path.join(REPO, "..", "shared", "data", "kodak"))
  parser.add_argument("--eval_dir", default=os.path.join(REPO, "results", "zoo_eval"))
  parser.add_argument("--notes", default="", help="text for the card (e.g. how it was trained)")
  parser.add_argument("--init_from", default=None, help="what the run started from")
  parser.add_argument("--kodak_images", default=None,
                      help="comma-separated Kodak file names to evaluate (default: "
                           "all 24); must include " + ", ".join(CHECK_IMAGES))
  parser.add_argument("--no_eval", action="store_true",
                      help="write weights and card without the Kodak evaluation")
  args = parser.parse_args()

  import dpc_tf
  from dpc_tf import saving, zoo
  from dpc_tf.evaluation import cli as eval_cli, report
  from dpc_tf.evaluation.metrics import Metrics
  from dpc_tf.evaluation.runner import evaluate, read_points

  model, steps, source = load_run_model(args.run)
  target = os.path.join(zoo.MODELS_DIR, args.name)
  fingerprint = saving.save_model(model, target, overwrite=True,
                                  weights_dtype="float16")
  shipped = dpc_tf.load_model(target)
  print(f"Saved {args.name} ({source}, {steps} steps) as float16: "
        f"fingerprint {fingerprint}")
  flags = read_flags(args.run)
  curve = learning_curve(args.run)
  card = dict(
      name=args.name, architecture=shipped.architecture, config=shipped.get_config(),
      distortion=flags.get("distortion"), alpha=flags.get("alpha") or None,
      lpips_trunk=flags.get("lpips_trunk"),
      lmbda_per_quality={str(q + 1): l for q, l in enumerate(shipped.lmbdas)},
      quality_range=list(shipped.quality_range), fingerprint=fingerprint,
      weights="float16 (weights.npz); figures measured on these weights",
      training=dict(data=TRAINING_DATA, steps=steps, source=source,
                    patch_size=int(flags.get("patch_size", 0)),
                    batch_size=int(flags.get("batch_size", 0)),
                    learning_rate=float(flags.get("learning_rate", 0)),
                    learning_rate_schedule=learning_rate_schedule(flags),
                    init_from=args.init_from,
                    cpu_hours=(curve[-1]["cpu_hours"] if curve else None),
                    hardware="2 CPU cores (x86-64, AVX-512), no GPU"),
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
    # Points of an older build of this entry are stale: drop them first.
    points_path = os.path.join(args.eval_dir, "points.csv")
    if os.path.exists(points_path):
      kept = [p for p in read_points(points_path) if p["codec"] != args.name]
      with open(points_path) as f:
        header = f.readline().strip().split(",")
      with open(points_path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
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


def _fmt(value, digits=3):
  return "–" if value is None else f"{value:.{digits}f}"


def card_markdown(card):
  lines = [f"# Zoo model `{card['name']}`", "",
           f"{card['architecture']} {card['config']}, trained on "
           f"**{card['distortion']}**"
           + (f" (α {card['alpha']}, LPIPS-{card['lpips_trunk']})"
              if card["distortion"] == "dpc" else "")
           + f"; fingerprint `{card['fingerprint']}`.", "",
           f"Training: {card['training']['steps']} steps of batch "
           f"{card['training']['batch_size']} × {card['training']['patch_size']}² crops, "
           f"{_fmt(card['training']['cpu_hours'], 2)} CPU-hours on "
           f"{card['training']['hardware']}"
           + (f", started from {card['training']['init_from']}"
              if card["training"]["init_from"] else "") + ". "
           f"Data: {card['training']['data']}", ""]
  if card.get("notes"):
    lines += [card["notes"], ""]
  if "kodak" in card:
    subset = ("" if card["kodak"]["images"] == 24 else
              f" — a subset: {', '.join(card['kodak']['image_names'])}")
    lines += [f"Kodak ({card['kodak']['images']} images{subset}), coded with the "
              "shipped float16 weights; classical codecs on the same images:", "",
              "| quality | λ | bpp | PSNR dB | MS-SSIM | MS-SSIM dB | LPIPS |",
              "|---|---|---|---|---|---|---|"]
    for row in card["kodak"]["per_quality"]:
      q = row["setting"].rpartition("@")[2]
      lines.append(f"| {q} | {card['lmbda_per_quality'].get(q, '')} | {_fmt(row['bpp'])} | "
                   f"{_fmt(row['psnr'], 2)} | {_fmt(row['msssim'], 4)} | "
                   f"{_fmt(row['msssim_db'], 2)} | {_fmt(row['lpips'])} |")
    lines += ["", "BD-rate (negative: fewer bits at equal quality):", "",
              "| against | PSNR | MS-SSIM dB | LPIPS |", "|---|---|---|---|"]
    for anchor, results in card["kodak"]["bd_rate"].items():
      cells = []
      for m in ("psnr", "msssim_db", "lpips"):
        r = results.get(m)
        value = None if r is None else r.get("bd_rate")
        cells.append("–" if value is None or value != value else f"{value:+.1f}%")
      lines.append(f"| {anchor} | " + " | ".join(cells) + " |")
  curve = card.get("learning_curve") or []
  if curve:
    lines += ["", "Learning curve (Kodak images of --curve_glob, estimated bpp):", "",
              "| step | CPU-hours | quality | bpp | PSNR dB | MS-SSIM dB | LPIPS |",
              "|---|---|---|---|---|---|---|"]
    for row in curve:
      lines.append(f"| {int(row['step'])} | {_fmt(row['cpu_hours'], 2)} | "
                   f"{_fmt(row['quality'], 0)} | {_fmt(row['bpp'])} | {_fmt(row['psnr'], 2)} | "
                   f"{_fmt(row['msssim_db'], 2)} | {_fmt(row.get('lpips'))} |")
  progress = card.get("learning_progress") or []
  if progress:
    lines += ["", "Progress between curve points (BD-rate of the later point against "
              "the earlier, and per CPU-hour; the curve has flattened below 1 % "
              "per CPU-hour):", "",
              "| steps | CPU-hours | PSNR | MS-SSIM dB | LPIPS | per CPU-hour: PSNR "
              "| MS-SSIM dB | LPIPS |", "|---|---|---|---|---|---|---|---|"]
    for entry in progress:
      cells = [_percent(entry["bd_rate"].get(m)) for m, _ in CURVE_METRICS]
      cells += [_percent(entry["bd_rate_per_cpu_hour"].get(m)) for m, _ in CURVE_METRICS]
      lines.append(f"| {entry['from_step']}→{entry['to_step']} | "
                   f"{_fmt(entry['cpu_hours'], 2)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _percent(value):
  return "–" if value is None else f"{value:+.1f}%"


if __name__ == "__main__":
  main()
