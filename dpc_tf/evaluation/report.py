"""Averages, BD-rates, tables and rate-quality plots from measured points.

Averaging follows the field's convention (CompressAI, tensorflow/compression):
at each codec setting, bpp and every metric are averaged over the images
independently (so the MS-SSIM dB column is the mean of per-image dB values).
A setting whose images did not all succeed is kept in the tables with its
image count, but left out of curves and BD-rates, because its mean is over a
different image set.
"""

import csv
import io
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


def summarise_settings(points, codec_settings, num_images, measure):
  """One row per codec setting with points, in table order.

  Args:
    points: dicts with at least "codec" and "setting".
    codec_settings: [(codec name, [setting keys])] giving which rows to make,
      in table order.
    num_images: how many images a complete setting has.
    measure: the setting's points -> a dict of its columns (with "bpp").

  Returns:
    Dicts of codec, setting, n_images, complete and `measure`'s columns;
    within a codec, sorted by bpp.
  """
  grouped = {}
  for point in points:
    grouped.setdefault((point["codec"], point["setting"]), []).append(point)
  rows = []
  for codec, settings in codec_settings:
    codec_rows = [
        {"codec": codec, "setting": setting, "n_images": len(group),
         "complete": len(group) == num_images, **measure(group)}
        for setting in settings
        for group in [grouped.get((codec, setting), [])] if group]
    rows += sorted(codec_rows, key=lambda r: r["bpp"])
  return rows


def _image_means(group):
  row = {column: _mean([p[column] for p in group])
         for column in ("bpp", "psnr", "msssim", "msssim_db", "encode_ms", "decode_ms")}
  # LPIPS only if every image has it (it is optional per run).
  lpips = [p.get("lpips") for p in group]
  row["lpips"] = _mean(lpips) if all(v is not None for v in lpips) else None
  return row


def summarise(points, codec_settings, num_images):
  """Averages points over images for each codec setting (SUMMARY_COLUMNS)."""
  return summarise_settings(points, codec_settings, num_images, _image_means)


def curves(rows, metric):
  """{codec: (bpp array, metric array)} of the complete settings with `metric`."""
  result = {}
  for row in rows:
    if row["complete"] and row[metric] is not None:
      bpps, values = result.setdefault(row["codec"], ([], []))
      bpps.append(row["bpp"])
      values.append(row[metric])
  return {codec: (np.array(b), np.array(v)) for codec, (b, v) in result.items()}


def bd_rates(rows, anchor, metrics, method="akima", directions=METRICS):
  """{metric: {codec: BDResult as dict}} for every codec against `anchor`.

  `directions` says for each metric whether higher is better.
  """
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
                                higher_is_better=directions[metric], method=method)
      table[metric][codec] = result.as_dict()
  return table


def quality_at_bpp(rows, metrics, bpps=REPORT_BPPS, directions=METRICS):
  """{metric: {codec: {bpp: value or None}}}, interpolated on each curve.

  Linear in log(bpp) between the two nearest points of the monotone curve;
  None outside the range a codec covers (no extrapolation).
  """
  table = {}
  for metric in metrics:
    table[metric] = {}
    for codec, (rates, values) in curves(rows, metric).items():
      rates, values = bdrate.monotone_curve(rates, values, directions[metric])
      at = {}
      for bpp in bpps:
        inside = len(rates) >= 2 and rates[0] <= bpp <= rates[-1]
        at[str(bpp)] = (float(np.interp(np.log(bpp), np.log(rates), values))
                        if inside else None)
      table[metric][codec] = at
  return table


def plot_curves(rows, metric, path_stem, learned_codecs=(), anchor=None, title=None,
                label=None, higher_is_better=None, references=()):
  """Draws one rate-quality figure with every codec; writes .png and .svg.

  `label` and `higher_is_better` default to the quality metric's; the codecs in
  `references` (e.g. the original files) are drawn as a dotted level at their
  value, with their rate in the legend. Returns the list of files written.
  """
  label = LABELS[metric] if label is None else label
  higher_is_better = METRICS[metric] if higher_is_better is None else higher_is_better
  # The object-oriented API with the Agg canvas: no pyplot state and no change
  # of the process-wide backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(7.5, 5.0), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  markers = "os^vD<>pPX*h"
  for index, (codec, (bpps, values)) in enumerate(curves(rows, metric).items()):
    if codec in references:
      for bpp, value in zip(bpps, values):
        if np.isfinite(value):  # An identical image has infinite PSNR.
          axes.axhline(value, color="0.3", linestyle=":", linewidth=1.2,
                       label=f"{codec} ({bpp:.2f} bpp)")
      continue
    learned = codec in learned_codecs
    axes.plot(bpps, values, marker=markers[index % len(markers)], markersize=4,
              linestyle="-" if learned else "--", linewidth=2.0 if learned else 1.2,
              label=codec + (" (anchor)" if codec == anchor else ""))
  axes.set_xlabel("bits per pixel")
  axes.set_ylabel(label)
  axes.set_xlim(left=0)
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="small", loc="lower right" if higher_is_better else "upper right")
  if title:
    axes.set_title(title)
  figure.tight_layout()
  written = []
  for extension in ("png", "svg"):
    path = f"{path_stem}.{extension}"
    image = io.BytesIO()
    figure.savefig(image, format=extension)
    _write_atomic(path, image.getvalue())
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


def _write_atomic(path, data):
  """Writes bytes or text through a temporary file: readers never see half a file."""
  from dpc_tf.images import write_atomic
  data = data.encode() if isinstance(data, str) else data
  write_atomic(path, lambda stream: stream.write(data), overwrite=True)


def write_summary_csv(rows, path, columns=SUMMARY_COLUMNS):
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=columns)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})
  _write_atomic(path, text.getvalue())


def write_summary_json(summary, path):
  _write_atomic(path, json.dumps(_json_safe(summary), indent=2) + "\n")


def write_text_atomic(path, text):
  _write_atomic(path, text)


def markdown(summary):
  """The human-readable report (also printed by `dpc eval`)."""
  lines = [f"# {summary.get('task', 'dpc eval')} summary", ""]
  images = summary["images"]
  lines.append(f"Images: {images['count']} ({images['description']}); "
               f"{len(images['unreadable'])} unreadable.")
  lines.append("")
  lines.append(summary.get("about") or (
      "Averages are over images at each setting (bpp and each metric separately). "
      "Rows marked `*` are missing images and are left out of curves and BD-rates."))
  lines.append("")
  # (column, header, digits) after codec, setting, n and bpp; written by the task.
  table = summary.get("table") or [
      (m, m, 4 if m in ("msssim", "lpips") else 2)
      for m in ("psnr", "msssim", "msssim_db", "lpips") if m in summary["metrics"]] + [
          ("encode_ms", "enc ms", 1), ("decode_ms", "dec ms", 1)]
  digits = {column: places for column, _, places in table}
  header = ["codec", "setting", "n", "bpp"] + [title for _, title, _ in table]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "|".join("---" for _ in header) + "|")
  for row in summary["rows"]:
    cells = [row["codec"], row["setting"] + ("" if row["complete"] else " *"),
             str(row["n_images"]), _format(row["bpp"])]
    cells += [_format(row[column], places) for column, _, places in table]
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
    label = summary.get("labels", {}).get(metric) or LABELS[metric]
    lines.append(f"## {label} at equal rate (interpolated; - = outside the sweep)")
    lines.append("")
    lines.append("| codec | " + " | ".join(f"{b} bpp" for b in bpps) + " |")
    lines.append("|---|" + "|".join("---" for _ in bpps) + "|")
    for codec, values in table.items():
      lines.append(f"| {codec} | " + " | ".join(
          _format(values[b], digits.get(metric, 2)) for b in bpps) + " |")
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


def print_summary(summary, out):
  """Prints the report and where its files are; the exit code (1: no rows)."""
  print(markdown(summary))
  print(f"Wrote points.csv, summary.json, summary.csv, summary.md and plots to {out}")
  return 0 if summary["rows"] else 1


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
