"""The evaluation loop behind `dpc eval` and `dpc eval-detect`: measure, resume, summarise.

One loop serves every task. A task says what is measured on each decoded
image (`QualityTask`: PSNR, MS-SSIM, LPIPS against the original;
`detection.DetectionTask`: a detector's boxes) and how the points of a setting
become a row (averages over images; COCO mAP over the set). The loop codes
every image with every codec setting, and does the rest the same way for all:

Every (codec, setting, image) point is appended to `points.csv` as soon as it
is measured and the file is flushed, so an interrupted run loses at most the
point in progress; a rerun with the same output directory measures only the
points that are not there yet (a point counts as done when it exists for the
same codec name, setting and image path, and the task has nothing to add to it,
e.g. LPIPS when LPIPS is asked for). Changing a codec's configuration under the
same name therefore needs a new output directory.

An unreadable image, a setting whose model cannot be loaded, or a codec error
on one image is reported on stderr and in the summary's failures, and the run
goes on without it.
"""

import contextlib
import csv
import io
import os
import sys
import time

try:
  import fcntl
except ImportError:  # Windows: no advisory locks; one evaluation per folder is up to the user.
  fcntl = None

from dpc_tf import files
from dpc_tf.evaluation import report
from dpc_tf.evaluation.metrics import LABELS, METRICS, Metrics
from dpc_tf.images import ImageError, read_image

POINT_COLUMNS = ["codec", "setting", "image", "width", "height", "num_bytes", "bpp",
                 "psnr", "msssim", "msssim_db", "lpips", "encode_ms", "decode_ms"]
_INT_COLUMNS = ("width", "height", "num_bytes")
_FLOAT_COLUMNS = ("bpp", "psnr", "msssim", "msssim_db", "lpips", "encode_ms", "decode_ms")

OUTPUT_FILES = ("points.csv", "summary.json", "summary.csv", "summary.md")
LOCK_FILE = ".dpc_eval.lock"  # git-ignored; left in place (removing it would race)
_held_locks = set()


class OutputBusyError(ValueError):
  """Another evaluation is writing into the same output directory."""


@contextlib.contextmanager
def output_lock(out_dir):
  """Lets one evaluation at a time write into `out_dir`.

  Two runs appending to one points.csv would each measure the points the
  other is measuring, and a rewrite of the file while another run reads it
  (tools/build_zoo.py drops stale points) loses points. A second run is
  refused at once with `OutputBusyError`; the lock (an advisory `flock` on
  `out_dir/.dpc_eval.lock`) goes with the process that holds it, even on a crash.
  Re-entrant within a process.
  """
  key = os.path.realpath(out_dir)
  if fcntl is None or key in _held_locks:
    yield
    return
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, LOCK_FILE), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise OutputBusyError(
          f"{out_dir} is in use by another evaluation ({holder}); wait for it "
          "to end or write into another output directory.") from None
    f.truncate(0)
    f.write(f"process {os.getpid()}")
    f.flush()
    _held_locks.add(key)
    try:
      yield
    finally:
      _held_locks.discard(key)
      fcntl.flock(f, fcntl.LOCK_UN)


class QualityTask:
  """`dpc eval`: the quality of each decoded image against its original.

  Args:
    metrics: a `Metrics` (default: PSNR and MS-SSIM, no LPIPS).

  A task has `point_columns` (points.csv, in order) with their `int_columns`
  and `float_columns` (other columns stay text), `prepare()`, `measure(original,
  decoded) -> {column: value}`, `needs_measuring(point)`, `summarise(points,
  codec_settings, images) -> rows`, `curve_metrics(rows)`, the `directions`
  (higher is better?) and `labels` of its metrics, the markdown `table`
  columns, and `describe()` (entries added to summary.json).
  """

  program = "dpc eval"
  point_columns = POINT_COLUMNS
  int_columns = _INT_COLUMNS
  float_columns = _FLOAT_COLUMNS
  summary_columns = report.SUMMARY_COLUMNS
  directions = METRICS
  labels = LABELS

  def __init__(self, metrics=None):
    self.metrics = metrics or Metrics()

  @property
  def table(self):
    """(column, header, digits) of the summary.md table, after codec/setting/n/bpp."""
    names = [m for m in ("psnr", "msssim", "msssim_db", "lpips") if m in self.metrics.names]
    return ([(m, m, 4 if m in ("msssim", "lpips") else 2) for m in names]
            + [("encode_ms", "enc ms", 1), ("decode_ms", "dec ms", 1)])

  def start(self, out_dir):
    """Called once with the output directory before anything is measured."""

  def check_image(self, path, image):
    """Raises ImageError if `image` (read from `path`) cannot be evaluated."""

  def prepare(self):
    self.metrics.prepare()

  def measure(self, original, decoded):
    return self.metrics(original, decoded)

  def needs_measuring(self, point):
    """Whether a point found in points.csv must be measured again."""
    return "lpips" in self.metrics.names and point["lpips"] is None

  def summarise(self, points, codec_settings, images):
    return report.summarise(points, codec_settings, len(images))

  def curve_metrics(self, rows):
    return [m for m in report.CURVE_METRICS
            if m in self.metrics.names or any(r.get(m) is not None for r in rows)]

  def describe(self):
    return {"metrics": self.metrics.names, "lpips": self.metrics.describe().get("lpips")}


def read_points(path, task=None):
  """Reads points.csv into a list of dicts (numbers parsed, "" -> None)."""
  task = task or QualityTask
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return []
  with open(path, newline="") as stream:
    reader = csv.DictReader(stream)
    if reader.fieldnames != task.point_columns:
      raise ValueError(
          f"{path} has columns {reader.fieldnames}, expected {task.point_columns}; it was "
          f"not written by this version of {task.program}. Use another output directory.")
    points = []
    for row in reader:
      if None in row or any(row[c] is None for c in task.point_columns):
        # A line cut short by a crash while writing; it is measured again.
        continue
      for column in task.int_columns:
        row[column] = int(row[column])
      for column in task.float_columns:
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

  def __init__(self, path, columns):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
      with open(path, "rb") as stream:
        stream.seek(-1, os.SEEK_END)
        needs_newline = stream.read(1) != b"\n"
    self._columns = columns
    self._stream = open(path, "a", newline="")
    self._writer = csv.DictWriter(self._stream, fieldnames=columns)
    if new:
      self._writer.writeheader()
    elif needs_newline:
      # Terminates a line cut short by a crash, so that it stays one bad row.
      self._stream.write("\r\n")

  def write(self, point):
    self._writer.writerow({k: _format_cell(point.get(k)) for k in self._columns})
    self._stream.flush()

  def close(self):
    self._stream.close()


def drop_points(out_dir, codec_name):
  """Removes codec `codec_name`'s points from `out_dir`/points.csv, so the
  next run measures them again (a model rebuilt under the same name, as
  tools/build_zoo.py does); returns how many. The file is replaced whole,
  under `output_lock`."""
  path = os.path.join(out_dir, "points.csv")
  with output_lock(out_dir):
    points = read_points(path)
    kept = [p for p in points if p["codec"] != codec_name]
    if len(kept) == len(points):
      return 0

    def write(stream):
      text = io.StringIO(newline="")
      writer = csv.DictWriter(text, fieldnames=POINT_COLUMNS)
      writer.writeheader()
      writer.writerows({k: _format_cell(p.get(k)) for k in POINT_COLUMNS} for p in kept)
      stream.write(text.getvalue().encode())
    files.write_atomic(path, write, overwrite=True)
  return len(points) - len(kept)


def measure_point(codec, setting, image, measure, path=None):
  """Codes one image at one setting; returns the point's measured columns.

  `measure(original, decoded)` gives the task's columns (a `Metrics` is one).
  `path` is the image's file, which `Original` stores as it is.
  """
  height, width, _ = image.shape
  start = time.perf_counter()
  data = codec.encode(image, setting) if path is None else codec.encode_file(path, image, setting)
  encoded = time.perf_counter()
  decoded = codec.decode(data, setting)
  finished = time.perf_counter()
  if not isinstance(data, (bytes, bytearray)):
    raise TypeError(f"encode returned {type(data).__name__}, expected bytes.")
  point = {"width": width, "height": height, "num_bytes": len(data),
           "bpp": 8.0 * len(data) / (height * width),
           "encode_ms": 1e3 * (encoded - start), "decode_ms": 1e3 * (finished - encoded)}
  point.update(measure(image, decoded))
  return point


def _normalise_paths(paths):
  return list(dict.fromkeys(os.path.normpath(str(p)) for p in paths))


def evaluate(images, codecs, out_dir, metrics=None, anchor=None, bd_method="akima",
             max_images=None, progress=True, log=None):
  """Evaluates codecs on images and writes the report files into `out_dir`.

  Args:
    images: image file paths (read as RGB, `dpc_tf.images.read_image` with
      alpha="composite").
    codecs: `EvalCodec` instances (classical or `ModelCodec`), each with its sweep.
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
  return run(QualityTask(metrics), images, codecs, out_dir, anchor=anchor,
             bd_method=bd_method, max_images=max_images, progress=progress, log=log)


def run(task, images, codecs, out_dir, anchor=None, bd_method="akima", max_images=None,
        progress=True, log=None):
  """Runs `task` on images coded by codecs; writes the report files into `out_dir`.

  The arguments are those of `evaluate`, with a task (`QualityTask`,
  `detection.DetectionTask`) in place of the metrics. `OutputBusyError` if
  another evaluation is writing into `out_dir` (see `output_lock`).
  """
  started = time.perf_counter()
  log = log or sys.stderr
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
  with output_lock(out_dir):
    return _run(task, image_paths, codecs, out_dir, anchor, bd_method, progress,
                log, started)


def _run(task, image_paths, codecs, out_dir, anchor, bd_method, progress, log, started):
  program = task.program
  os.makedirs(out_dir, exist_ok=True)
  task.start(out_dir)
  points_path = os.path.join(out_dir, "points.csv")
  existing = read_points(points_path, task)
  failures, notes, skipped = [], [], {}
  bar = None  # The progress bar while points are measured.

  def report_failure(failure):
    failures.append(failure)
    where = " ".join(str(failure[k]) for k in ("codec", "setting") if failure[k])
    message = (f"{program}: FAILED {where + ' ' if where else ''}{failure['image']} "
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
      print(f"{program}: SKIPPING codec {codec.name}: {reason}", file=log, flush=True)
    else:
      available.append(codec)
  if anchor is not None and anchor in skipped:
    print(f"{program}: the anchor {anchor} is unavailable; no BD-rates.", file=log, flush=True)

  # Read every image once up front: unreadable ones are reported before the
  # long part starts, and the sizes describe the set.
  readable, sizes = [], []
  for path in image_paths:
    try:
      read_notes = []
      image = read_image(path, alpha="composite", notes=read_notes)
      task.check_image(path, image)
    except ImageError as error:
      report_failure({"codec": None, "setting": None, "image": path, "stage": "read",
                      "error": str(error)})
      continue
    for note in read_notes:
      notes.append(note)
      print(f"{program}: {note}", file=log, flush=True)
    readable.append(path)
    sizes.append(image.shape[:2])

  done = {}
  for point in existing:
    done[(point["codec"], point["setting"], point["image"])] = point
  pending = []  # [(codec, setting, key, [image paths])]
  for codec in available:
    for setting in codec.settings:
      key = codec.setting_key(setting)
      todo = [p for p in readable
              if (codec.name, key, p) not in done or task.needs_measuring(done[(codec.name, key, p)])]
      if todo:
        pending.append((codec, setting, key, todo))
  total = sum(len(todo) for *_, todo in pending)
  measured = 0
  if total:
    task.prepare()
    from tqdm import tqdm
    bar = tqdm(total=total, desc=program, unit="pt", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    writer = _PointWriter(points_path, task.point_columns)
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
            image = read_image(path, alpha="composite")
            point = measure_point(codec, setting, image, task.measure, path=path)
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
  rows = task.summarise(points, codec_settings, readable)
  curve_metrics = task.curve_metrics(rows)
  learned = [c.name for c in available if getattr(c, "learned", False)]
  # Reference codecs (the original files) are one point: a level on the plots,
  # not a curve with a BD-rate.
  references = [c.name for c in available if getattr(c, "reference", False)]
  curve_rows = [r for r in rows if r["codec"] not in references]
  plots = {}
  for metric in curve_metrics:
    if report.curves(rows, metric):
      plots[metric] = report.plot_curves(
          rows, metric, os.path.join(out_dir, f"rd_{metric}"), learned_codecs=learned,
          anchor=anchor, title=f"{len(readable)} images", label=task.labels[metric],
          higher_is_better=task.directions[metric], references=references)
  use_anchor = anchor if anchor is not None and anchor not in skipped else None
  from dpc_tf.evaluation.codecs import library_versions
  summary = {
      "task": program,
      "images": {"count": len(readable), "paths": readable,
                 "description": report.describe_images(readable, sizes),
                 "unreadable": [f["image"] for f in failures if f["stage"] == "read"]},
      **task.describe(),
      "table": task.table,
      "labels": {m: task.labels[m] for m in curve_metrics},
      "codecs": {c.name: {"description": c.describe(), "setting_name": c.setting_name,
                          "settings": [c.setting_key(s) for s in c.settings],
                          "learned": bool(getattr(c, "learned", False))}
                 for c in available},
      "anchor": use_anchor,
      "bd_method": bd_method,
      "rows": rows,
      "bd_rate": (report.bd_rates(curve_rows, use_anchor, curve_metrics, bd_method,
                                  directions=task.directions)
                  if use_anchor else {}),
      "quality_at_bpp": report.quality_at_bpp(curve_rows, curve_metrics,
                                              directions=task.directions),
      "plots": {m: [os.path.basename(f) for f in files] for m, files in plots.items()},
      "skipped_codecs": skipped,
      "failures": failures,
      "notes": notes,
      "versions": _versions(library_versions),
      "run": {"points_measured": measured, "points_reused": len(points) - measured,
              "seconds": time.perf_counter() - started},
  }
  report.write_summary_csv(rows, os.path.join(out_dir, "summary.csv"), task.summary_columns)
  report.write_summary_json(summary, os.path.join(out_dir, "summary.json"))
  report.write_text_atomic(os.path.join(out_dir, "summary.md"), report.markdown(summary))
  return summary


def _versions(library_versions):
  from importlib import metadata
  versions = library_versions()
  for package in ("tensorflow", "tensorflow-compression", "pycocotools"):
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
