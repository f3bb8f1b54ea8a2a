"""The evaluation loop behind `dpc eval`: measure, resume, summarise.

Every (codec, setting, image) point is appended to `points.csv` as soon as it
is measured and the file is flushed, so an interrupted run loses at most the
point in progress; a rerun with the same output directory measures only the
points that are not there yet (a point counts as done when it exists for the
same codec name, setting and image path, and has LPIPS if LPIPS is asked for).
Changing a codec's configuration under the same name therefore needs a new
output directory.

An unreadable image, a setting whose model cannot be loaded, or a codec error
on one image is reported on stderr and in the summary's failures, and the run
goes on without it.
"""

import csv
import os
import sys
import time

from dpc_tf.evaluation import report
from dpc_tf.evaluation.images import ImageError, load_image
from dpc_tf.evaluation.metrics import Metrics

POINT_COLUMNS = ["codec", "setting", "image", "width", "height", "num_bytes", "bpp",
                 "psnr", "msssim", "msssim_db", "lpips", "encode_ms", "decode_ms"]
_INT_COLUMNS = ("width", "height", "num_bytes")
_FLOAT_COLUMNS = ("bpp", "psnr", "msssim", "msssim_db", "lpips", "encode_ms", "decode_ms")

OUTPUT_FILES = ("points.csv", "summary.json", "summary.csv", "summary.md")


def read_points(path):
  """Reads points.csv into a list of dicts (numbers parsed, "" -> None)."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return []
  with open(path, newline="") as stream:
    reader = csv.DictReader(stream)
    if reader.fieldnames != POINT_COLUMNS:
      raise ValueError(
          f"{path} has columns {reader.fieldnames}, expected {POINT_COLUMNS}; it was not "
          "written by this version of dpc eval. Use another output directory.")
    points = []
    for row in reader:
      if None in row or any(row[c] is None for c in POINT_COLUMNS):
        # A line cut short by a crash while writing; it is measured again.
        continue
      for column in _INT_COLUMNS:
        row[column] = int(row[column])
      for column in _FLOAT_COLUMNS:
        row[column] = float(row[column]) if row[column] != "" else None
      points.append(row)
  return points


def _format_cell(value):
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  return value


class _PointWriter:
  """Appends points to points.csv, flushing after each one."""

  def __init__(self, path):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
      with open(path, "rb") as stream:
        stream.seek(-1, os.SEEK_END)
        needs_newline = stream.read(1) != b"\n"
    self._stream = open(path, "a", newline="")
    self._writer = csv.DictWriter(self._stream, fieldnames=POINT_COLUMNS)
    if new:
      self._writer.writeheader()
    elif needs_newline:
      # Terminates a line cut short by a crash, so that it stays one bad row.
      self._stream.write("\r\n")

  def write(self, point):
    self._writer.writerow({k: _format_cell(point.get(k)) for k in POINT_COLUMNS})
    self._stream.flush()

  def close(self):
    self._stream.close()


def measure_point(codec, setting, image, metrics):
  """Codes one image at one setting; returns the point's measured columns."""
  height, width, _ = image.shape
  start = time.perf_counter()
  data = codec.encode(image, setting)
  encoded = time.perf_counter()
  decoded = codec.decode(data, setting)
  finished = time.perf_counter()
  if not isinstance(data, (bytes, bytearray)):
    raise TypeError(f"encode returned {type(data).__name__}, expected bytes.")
  point = {"width": width, "height": height, "num_bytes": len(data),
           "bpp": 8.0 * len(data) / (height * width),
           "encode_ms": 1e3 * (encoded - start), "decode_ms": 1e3 * (finished - encoded)}
  point.update(metrics(image, decoded))
  return point


def _normalise_paths(paths):
  return list(dict.fromkeys(os.path.normpath(str(p)) for p in paths))


def evaluate(images, codecs, out_dir, metrics=None, anchor=None, bd_method="akima",
             max_images=None, progress=True, log=None):
  """Evaluates codecs on images and writes the report files into `out_dir`.

  Args:
    images: image file paths (read with Pillow, see `images.load_image`).
    codecs: `Codec` instances (classical or `ModelCodec`), each with its sweep.
    out_dir: output directory; created if needed, resumed if it has points.
    metrics: a `Metrics` (default: PSNR, MS-SSIM and LPIPS-alex).
    anchor: codec name for BD-rates, or None for none.
    bd_method: BD interpolation ("akima", "pchip" or "cubic").
    max_images: evaluate only the first this many images.
    progress: show a tqdm progress bar.
    log: stream for failures and notes (default stderr).

  Returns:
    The summary dict also written to summary.json.
  """
  started = time.perf_counter()
  log = log or sys.stderr
  metrics = metrics or Metrics()
  names = [codec.name for codec in codecs]
  if len(set(names)) != len(names):
    raise ValueError(f"Codec names must be unique, got {names}.")
  if anchor is not None and anchor not in names:
    raise ValueError(f"Anchor {anchor!r} is not among the evaluated codecs {names}.")
  if bd_method not in report.bdrate.METHODS:
    raise ValueError(f"Unknown BD interpolation {bd_method!r}; "
                     f"choose one of {report.bdrate.METHODS}.")
  image_paths = _normalise_paths(images)
  if max_images is not None:
    image_paths = image_paths[:max_images]
  if not image_paths:
    raise ValueError("No images to evaluate.")
  os.makedirs(out_dir, exist_ok=True)
  points_path = os.path.join(out_dir, "points.csv")
  existing = read_points(points_path)
  failures, notes, skipped = [], [], {}
  bar = None  # The progress bar while points are measured.

  def report_failure(failure):
    failures.append(failure)
    where = " ".join(str(failure[k]) for k in ("codec", "setting") if failure[k])
    message = (f"dpc eval: FAILED {where + ' ' if where else ''}{failure['image']} "
               f"({failure['stage']}): {report.one_line(failure['error'])}")
    if bar is not None:
      bar.write(message, file=log)
    else:
      print(message, file=log, flush=True)

  available = []
  for codec in codecs:
    reason = codec.unavailable_reason()
    if reason:
      skipped[codec.name] = reason
      print(f"dpc eval: SKIPPING codec {codec.name}: {reason}", file=log, flush=True)
    else:
      available.append(codec)
  if anchor is not None and anchor in skipped:
    print(f"dpc eval: the anchor {anchor} is unavailable; no BD-rates.", file=log, flush=True)

  # Read every image once up front: unreadable ones are reported before the
  # long part starts, and the sizes describe the set.
  readable, sizes = [], []
  for path in image_paths:
    try:
      image, note = load_image(path)
    except ImageError as error:
      report_failure({"codec": None, "setting": None, "image": path, "stage": "read",
                      "error": str(error)})
      continue
    if note:
      notes.append(note)
      print(f"dpc eval: {note}", file=log, flush=True)
    readable.append(path)
    sizes.append(image.shape[:2])

  done = {}
  for point in existing:
    done[(point["codec"], point["setting"], point["image"])] = point
  need_lpips = "lpips" in metrics.names
  pending = []  # [(codec, setting, key, [image paths])]
  for codec in available:
    for setting in codec.settings:
      key = codec.setting_key(setting)
      todo = [p for p in readable
              if (codec.name, key, p) not in done
              or (need_lpips and done[(codec.name, key, p)]["lpips"] is None)]
      if todo:
        pending.append((codec, setting, key, todo))
  total = sum(len(todo) for *_, todo in pending)
  measured = 0
  if total:
    metrics.prepare()
    from tqdm import tqdm
    bar = tqdm(total=total, desc="dpc eval", unit="pt", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    writer = _PointWriter(points_path)
    try:
      for codec, setting, key, todo in pending:
        bar.set_postfix_str(f"{codec.name} {key}"[-40:])
        try:
          codec.prepare(setting)
        except Exception as error:  # pylint: disable=broad-except
          report_failure({"codec": codec.name, "setting": key, "image": "*",
                          "stage": "prepare", "error": f"{type(error).__name__}: {error}"})
          bar.update(len(todo))
          continue
        for path in todo:
          try:
            image, _ = load_image(path)
            point = measure_point(codec, setting, image, metrics)
          except Exception as error:  # pylint: disable=broad-except
            report_failure({"codec": codec.name, "setting": key, "image": path,
                            "stage": "code", "error": f"{type(error).__name__}: {error}"})
          else:
            point.update(codec=codec.name, setting=key, image=path)
            writer.write(point)
            done[(codec.name, key, path)] = point
            measured += 1
          bar.update(1)
    finally:
      writer.close()
      bar.close()
      bar = None

  # Summarise exactly this run's codecs, settings and images.
  readable_set = set(readable)
  wanted = {(c.name, c.setting_key(s)) for c in available for s in c.settings}
  points = [p for (name, key, path), p in done.items()
            if (name, key) in wanted and path in readable_set]
  codec_settings = [(c.name, [c.setting_key(s) for s in c.settings]) for c in available]
  rows = report.summarise(points, codec_settings, len(readable))
  curve_metrics = [m for m in report.CURVE_METRICS
                   if m in metrics.names or any(r.get(m) is not None for r in rows)]
  learned = [c.name for c in available if getattr(c, "learned", False)]
  plots = {}
  for metric in curve_metrics:
    if report.curves(rows, metric):
      plots[metric] = report.plot_curves(
          rows, metric, os.path.join(out_dir, f"rd_{metric}"), learned_codecs=learned,
          anchor=anchor, title=f"{len(readable)} images")
  use_anchor = anchor if anchor is not None and anchor not in skipped else None
  from dpc_tf.evaluation.codecs import library_versions
  summary = {
      "images": {"count": len(readable), "paths": readable,
                 "description": report.describe_images(readable, sizes),
                 "unreadable": [f["image"] for f in failures if f["stage"] == "read"]},
      "metrics": metrics.names,
      "lpips": metrics.describe().get("lpips"),
      "codecs": {c.name: {"description": c.describe(), "setting_name": c.setting_name,
                          "settings": [c.setting_key(s) for s in c.settings],
                          "learned": bool(getattr(c, "learned", False))}
                 for c in available},
      "anchor": use_anchor,
      "bd_method": bd_method,
      "rows": rows,
      "bd_rate": (report.bd_rates(rows, use_anchor, curve_metrics, bd_method)
                  if use_anchor else {}),
      "quality_at_bpp": report.quality_at_bpp(rows, curve_metrics),
      "plots": {m: [os.path.basename(f) for f in files] for m, files in plots.items()},
      "skipped_codecs": skipped,
      "failures": failures,
      "notes": notes,
      "versions": _versions(library_versions),
      "run": {"points_measured": measured, "points_reused": len(points) - measured,
              "seconds": time.perf_counter() - started},
  }
  report.write_summary_csv(rows, os.path.join(out_dir, "summary.csv"))
  report.write_summary_json(summary, os.path.join(out_dir, "summary.json"))
  with open(os.path.join(out_dir, "summary.md"), "w") as stream:
    stream.write(report.markdown(summary))
  return summary


def _versions(library_versions):
  from importlib import metadata
  versions = library_versions()
  for package in ("tensorflow", "tensorflow-compression"):  # Metrics and models.
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  try:
    import dpc_tf
    versions["dpc_tf"] = getattr(dpc_tf, "__version__", None)
  except ImportError:
    pass
  return versions

