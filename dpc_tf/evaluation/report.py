"""Averages, BD-rates, tables and rate-quality plots from measured points.

Averaging follows the field's convention (CompressAI, tensorflow/compression):
at each codec setting, bpp and every metric are averaged over the images
independently (so the MS-SSIM dB column is the mean of per-image dB values).
A setting whose images did not all succeed is kept in the tables with its
image count, but left out of curves and BD-rates, because its mean is over a
different image set.
"""

import csv
import json
import math
import os

import numpy as np

from dpc_tf.evaluation import bdrate
from dpc_tf.evaluation.metrics import LABELS, METRICS

# Metrics that get a plot and a BD-rate (raw MS-SSIM is shown in dB instead).
CURVE_METRICS = ("psnr", "msssim_db", "lpips")
# Rates at which the summary interpolates each curve's quality.
REPORT_BPPS = (0.1, 0.25, 0.5, 1.0)

SUMMARY_COLUMNS = ["codec", "setting", "n_images", "complete", "bpp", "psnr", "msssim",
                   "msssim_db", "lpips", "encode_ms", "decode_ms"]


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def summarise(points, codec_settings, num_images):
  """Averages points over images for each codec setting.

  Args:
    points: dicts with "codec", "setting", "bpp", metric and timing values.
    codec_settings: [(codec name, [setting keys])] giving which rows to make,
      in table order.
    num_images: how many images a complete setting has.

  Returns:
    A list of dicts with SUMMARY_COLUMNS; within a codec, sorted by bpp.
  """
  grouped = {}
  for point in points:
    grouped.setdefault((point["codec"], point["setting"]), []).append(point)
  rows = []
  for codec, settings in codec_settings:
    codec_rows = []
    for setting in settings:
      group = grouped.get((codec, setting), [])
      if not group:
        continue
      row = {"codec": codec, "setting": setting, "n_images": len(group),
             "complete": len(group) == num_images}
      for column in ("bpp", "psnr", "msssim", "msssim_db", "encode_ms", "decode_ms"):
        row[column] = _mean([p[column] for p in group])
      # LPIPS only if every image has it (it is optional per run).
      lpips = [p.get("lpips") for p in group]
      row["lpips"] = _mean(lpips) if all(v is not None for v in lpips) else None
      codec_rows.append(row)
    rows += sorted(codec_rows, key=lambda r: r["bpp"])
  return rows


def curves(rows, metric):
  """{codec: (bpp array, metric array)} of the complete settings with `metric`."""
  result = {}
  for row in rows:
    if row["complete"] and row[metric] is not None:
      bpps, values = result.setdefault(row["codec"], ([], []))
      bpps.append(row["bpp"])
      values.append(row[metric])
  return {codec: (np.array(b), np.array(v)) for codec, (b, v) in result.items()}


def bd_rates(rows, anchor, metrics, method="akima"):
  """{metric: {codec: BDResult as dict}} for every codec against `anchor`."""
  table = {}
  for metric in metrics:
    metric_curves = curves(rows, metric)
    table[metric] = {}
    for codec in dict.fromkeys(row["codec"] for row in rows):
      if codec not in metric_curves:
        result = bdrate.BDResult(math.nan, reason=f"no complete settings with {metric}.")
      elif anchor not in metric_curves:
        result = bdrate.BDResult(
            math.nan, reason=f"the anchor {anchor!r} has no complete settings with {metric}.")
      else:
        result = bdrate.bd_rate(*metric_curves[anchor], *metric_curves[codec],
                                higher_is_better=METRICS[metric], method=method)
      table[metric][codec] = result.as_dict()
  return table


def quality_at_bpp(rows, metrics, bpps=REPORT_BPPS):
  """{metric: {codec: {bpp: value or None}}}, interpolated on each curve.

  Linear in log(bpp) between the two nearest points of the monotone curve;
  None outside the range a codec covers (no extrapolation).
  """
  table = {}
  for metric in metrics:
    table[metric] = {}
    for codec, (rates, values) in curves(rows, metric).items():
      rates, values = bdrate.monotone_curve(rates, values, METRICS[metric])
      at = {}
      for bpp in bpps:
        inside = len(rates) >= 2 and rates[0] <= bpp <= rates[-1]
        at[str(bpp)] = (float(np.interp(np.log(bpp), np.log(rates), values))
                        if inside else None)
      table[metric][codec] = at
  return table


def plot_curves(rows, metric, path_stem, learned_codecs=(), anchor=None, title=None):
  """Draws one rate-quality figure with every codec; writes .png and .svg.

  Returns the list of files written.
  """
  # The object-oriented API with the Agg canvas: no pyplot state and no change
  # of the process-wide backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(7.5, 5.0), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  markers = "os^vD<>pPX*h"
  for index, (codec, (bpps, values)) in enumerate(curves(rows, metric).items()):
    learned = codec in learned_codecs
    label = codec + (" (anchor)" if codec == anchor else "")
    axes.plot(bpps, values, marker=markers[index % len(markers)], markersize=4,
              linestyle="-" if learned else "--", linewidth=2.0 if learned else 1.2,
              label=label)
  axes.set_xlabel("bits per pixel")
  axes.set_ylabel(LABELS[metric])
  axes.set_xlim(left=0)
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="small", loc="lower right" if METRICS[metric] else "upper right")
  if title:
    axes.set_title(title)
  figure.tight_layout()
  written = []
  for extension in ("png", "svg"):
    path = f"{path_stem}.{extension}"
    figure.savefig(path)
    written.append(path)
  return written


def one_line(text, limit=300):
  """An error message on one line (TensorFlow's span many), cut to `limit`."""
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _format(value, digits=4):
  if value is None:
    return "-"
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.{digits}f}"
  return str(value)


def _json_safe(value):
  """Replaces NaN/inf by None so that summary.json is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_summary_csv(rows, path):
  with open(path, "w", newline="") as stream:
    writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if row[k] is None else row[k]) for k in SUMMARY_COLUMNS})


def write_summary_json(summary, path):
  with open(path, "w") as stream:
    json.dump(_json_safe(summary), stream, indent=2)
    stream.write("\n")


def markdown(summary):
  """The human-readable report (also printed by `dpc eval`)."""
  lines = ["# dpc eval summary", ""]
  images = summary["images"]
  lines.append(f"Images: {images['count']} ({images['description']}); "
               f"{len(images['unreadable'])} unreadable.")
  lines.append("")
  lines.append("Averages are over images at each setting (bpp and each metric separately). "
               "Rows marked `*` are missing images and are left out of curves and BD-rates.")
  lines.append("")
  metric_names = [m for m in ("psnr", "msssim", "msssim_db", "lpips") if m in summary["metrics"]]
  header = ["codec", "setting", "n", "bpp"] + metric_names + ["enc ms", "dec ms"]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "|".join("---" for _ in header) + "|")
  for row in summary["rows"]:
    cells = [row["codec"], row["setting"] + ("" if row["complete"] else " *"),
             str(row["n_images"]), _format(row["bpp"])]
    cells += [_format(row[m], 4 if m in ("msssim", "lpips", "bpp") else 2) for m in metric_names]
    cells += [_format(row["encode_ms"], 1), _format(row["decode_ms"], 1)]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if summary.get("anchor"):
    bd = summary["bd_rate"]
    lines.append(f"## BD-rate against {summary['anchor']} ({summary['bd_method']} "
                 "interpolation; negative = fewer bits for the same quality)")
    lines.append("")
    metrics = list(bd)
    lines.append("| codec | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "|".join("---" for _ in metrics) + "|")
    codecs = list(dict.fromkeys(c for m in metrics for c in bd[m]))
    reasons = []
    for codec in codecs:
      cells = []
      for metric in metrics:
        result = bd[metric].get(codec)
        if result is None:
          cells.append("-")
        elif result["bd_rate"] is None or math.isnan(result["bd_rate"]):
          cells.append("n/a")
          reasons.append(f"- {codec}, {metric}: {result['reason']}")
        else:
          partial = "" if result["overlap"] >= 0.75 else f" (overlap {result['overlap']:.0%})"
          cells.append(f"{result['bd_rate']:+.1f}%{partial}")
      lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    if reasons:
      lines += ["", "BD-rate not computed:"] + reasons
    lines.append("")
  at_bpp = summary.get("quality_at_bpp", {})
  for metric, table in at_bpp.items():
    if not table:
      continue
    bpps = list(next(iter(table.values())))
    lines.append(f"## {LABELS[metric]} at equal rate (interpolated; - = outside the sweep)")
    lines.append("")
    lines.append("| codec | " + " | ".join(f"{b} bpp" for b in bpps) + " |")
    lines.append("|---|" + "|".join("---" for _ in bpps) + "|")
    for codec, values in table.items():
      lines.append(f"| {codec} | " + " | ".join(
          _format(values[b], 4 if metric == "lpips" else 2) for b in bpps) + " |")
    lines.append("")
  if summary["skipped_codecs"]:
    lines.append("## Skipped codecs")
    lines += [f"- {name}: {reason}" for name, reason in summary["skipped_codecs"].items()]
    lines.append("")
  if summary["failures"]:
    lines.append(f"## Failures ({len(summary['failures'])})")
    for failure in summary["failures"]:
      where = " ".join(str(failure[k]) for k in ("codec", "setting") if failure[k])
      lines.append(f"- {where + ', ' if where else ''}{failure['image']} ({failure['stage']}): "
                   f"{one_line(failure['error'])}")
    lines.append("")
  if summary.get("notes"):
    lines.append("## Notes")
    lines += [f"- {note}" for note in summary["notes"]]
    lines.append("")
  lines.append("## Codecs")
  lines += [f"- {name}: {info['description']}; settings {info['settings']}"
            for name, info in summary["codecs"].items()]
  lines.append("")
  lines.append("## Versions")
  lines += [f"- {name}: {version}" for name, version in summary["versions"].items()]
  run = summary["run"]
  lines += ["", f"Points measured in this run: {run['points_measured']}, reused from "
            f"points.csv: {run['points_reused']}; {run['seconds']:.1f} s."]
  return "\n".join(lines) + "\n"


def describe_images(paths, sizes):
  """A short description of an image set: common folder and sizes."""
  if not paths:
    return "no images"
  try:  # As given (relative paths stay relative in committed results).
    folder = os.path.commonpath([os.path.dirname(p) or "." for p in paths])
  except ValueError:  # A mix of absolute and relative paths.
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  counts = {}
  for height, width in sizes:
    counts[f"{width}x{height}"] = counts.get(f"{width}x{height}", 0) + 1
  size_text = ", ".join(f"{n} x {size}" for size, n in sorted(counts.items()))
  return f"from {folder}; sizes (WxH) {size_text}"
