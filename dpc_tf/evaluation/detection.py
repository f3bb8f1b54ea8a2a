"""Object-detection accuracy on compressed images (`dpc eval-detect`).

The task for `runner.run`: each image of a COCO-format set is coded at each
codec setting, a detector runs on the decoded image, and its raw detections
are stored in points.csv. Each setting's row then has the mean bpp and the COCO
box metrics of the detections on all its images, computed by pycocotools
(`COCOeval`, iouType "bbox"): mAP@[.5:.95], AP50, AP75 and AP for small,
medium and large objects, so curves are mAP against bpp and BD-rates are the
rate saved at equal mAP.

The detector's class ids are mapped to the ground truth's category ids by an
explicit `ClassMap` (an offset and optionally a label map), applied when the
summary is made: points keep the detector's own ids, so a wrong mapping is
fixed by rerunning with the right one, without detecting again. A detection
whose class maps to no category of the ground truth is dropped and counted
(`unmapped` in the rows); many of them mean the mapping is wrong.
"""

import contextlib
import io
import json
import os
import time

import numpy as np

from dpc_tf.evaluation import report
from dpc_tf.images import ImageError

# Box metrics in pycocotools' `COCOeval.stats` order (the first six entries).
METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
LABELS = {"map": "COCO mAP@[.5:.95]", "ap50": "AP50 (IoU 0.5)", "ap75": "AP75 (IoU 0.75)",
          "ap_small": "AP small (< 32² px)", "ap_medium": "AP medium",
          "ap_large": "AP large (> 96² px)"}
DIRECTIONS = {metric: True for metric in METRICS}
CURVE_METRICS = ("map", "ap50")

POINT_COLUMNS = ["codec", "setting", "image", "width", "height", "num_bytes", "bpp",
                 "num_detections", "detections", "encode_ms", "decode_ms", "detect_ms"]
SUMMARY_COLUMNS = (["codec", "setting", "n_images", "complete", "bpp"] + list(METRICS)
                   + ["detections", "unmapped", "encode_ms", "decode_ms", "detect_ms"])
# Stored precision of the detections: 1e-5 of the image side is ~0.01 px.
_BOX_DIGITS, _SCORE_DIGITS = 5, 5


def _quiet(function, *args, **kwargs):
  """Calls a pycocotools function without its prints on stdout."""
  with contextlib.redirect_stdout(io.StringIO()):
    return function(*args, **kwargs)


class CocoGroundTruth:
  """COCO-format ground truth: `instances.json` and the folder of its images.

  Args:
    instances: path of the annotations (COCO "instances" JSON: images,
      annotations with "bbox" [x, y, width, height] in pixels, categories).
    image_dir: the folder holding each image's "file_name".
  """

  def __init__(self, instances, image_dir):
    from pycocotools.coco import COCO
    try:
      with open(instances) as stream:
        data = json.load(stream)
    except (OSError, ValueError) as error:
      raise ValueError(f"cannot read the ground truth {instances!r}: {error}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
      raise ValueError(f"{instances!r} is not a COCO instances file: it has no {missing}.")
    if not os.path.isdir(image_dir):
      raise ValueError(f"image folder {image_dir!r} does not exist.")
    self.instances, self.image_dir = instances, image_dir
    self.coco = COCO()
    self.coco.dataset = data
    _quiet(self.coco.createIndex)
    self.categories = {c["id"]: c["name"] for c in data["categories"]}
    self.image_ids, self.sizes, self.paths = {}, {}, []
    for entry in data["images"]:
      path = os.path.normpath(os.path.join(image_dir, entry["file_name"]))
      self.paths.append(path)
      self.image_ids[path] = entry["id"]
      self.sizes[path] = (entry["height"], entry["width"])
    self.num_annotations = len(data["annotations"])

  def check_image(self, path, image):
    """Raises ImageError unless `image` has the size the annotations give."""
    path = os.path.normpath(path)
    if path not in self.image_ids:
      raise ImageError(f"{path}: not an image of {self.instances}.")
    if image.shape[:2] != self.sizes[path]:
      height, width = self.sizes[path]
      raise ImageError(
          f"{path}: read as {image.shape[1]}x{image.shape[0]} but {self.instances} gives "
          f"{width}x{height} (an EXIF rotation?); its boxes would not match.")

  def evaluate(self, results, image_ids):
    """COCO box metrics of `results` on the images `image_ids`.

    Args:
      results: dicts with "image_id", "category_id", "bbox" [x, y, w, h] in
        pixels and "score", as the COCO results format has them.
      image_ids: the images evaluated (also those with no detections).

    Returns:
      {metric: value} for `METRICS`; None where undefined (no ground-truth
      object of that size among the images).
    """
    from pycocotools.cocoeval import COCOeval
    from pycocotools.coco import COCO
    # The results as a COCO object, built here rather than with loadRes, which
    # fails on an empty list (a codec can leave nothing to detect).
    detections = COCO()
    detections.dataset = {
        "images": self.coco.dataset["images"], "categories": self.coco.dataset["categories"],
        "annotations": [dict(result, id=index + 1, area=result["bbox"][2] * result["bbox"][3],
                             iscrowd=0) for index, result in enumerate(results)]}
    _quiet(detections.createIndex)
    evaluation = COCOeval(self.coco, detections, "bbox")
    evaluation.params.imgIds = sorted(image_ids)
    _quiet(evaluation.evaluate)
    _quiet(evaluation.accumulate)
    _quiet(evaluation.summarize)
    return {metric: (float(value) if value >= 0 else None)
            for metric, value in zip(METRICS, evaluation.stats)}

  def describe(self):
    return {"instances": self.instances, "image_dir": self.image_dir,
            "images": len(self.paths), "annotations": self.num_annotations,
            "categories": len(self.categories)}


class ClassMap:
  """Maps a detector's class ids to the ground truth's category ids, explicitly.

  The detector's class c becomes k = c + offset. Without a label map, k is the
  category id. With one, k indexes it:
    - a .txt file: one name per line, line k (from 0) naming k;
    - a .json file: {"k": category id or name}.
  Names are matched to the ground truth's category names (exactly); a k with no
  match (e.g. "???" in TF's COCO label files) maps to nothing.

  Args:
    offset: the integer added to the detector's class ids.
    label_map: optional path of a label map as above.
    categories: {category id: name} of the ground truth.
  """

  def __init__(self, offset, categories, label_map=None):
    if offset is None or int(offset) != offset:
      raise ValueError(f"the class-id offset must be an integer, got {offset!r}.")
    self.offset, self.label_map = int(offset), label_map
    self.categories = dict(categories)
    by_name = {name: category for category, name in self.categories.items()}
    self.unmatched_names = []
    if label_map is None:
      self._table = None
      return
    entries = self._read_label_map(label_map)
    self._table = {}
    for key, value in entries.items():
      if isinstance(value, int) and not isinstance(value, bool):
        if value not in self.categories:
          raise ValueError(f"label map {label_map!r} maps {key} to category id {value}, "
                           f"which the ground truth does not have.")
        self._table[key] = value
      elif value in by_name:
        self._table[key] = by_name[value]
      else:
        self.unmatched_names.append(value)
    if not self._table:
      raise ValueError(f"no name of label map {label_map!r} is a category of the ground "
                       f"truth (e.g. {sorted(by_name)[:5]}); check the file.")

  @staticmethod
  def _read_label_map(path):
    try:
      with open(path) as stream:
        text = stream.read()
    except OSError as error:
      raise ValueError(f"cannot read the label map {path!r}: {error}") from None
    if path.lower().endswith(".json"):
      try:
        data = json.loads(text)
        return {int(key): value for key, value in data.items()}
      except (ValueError, AttributeError, TypeError):
        raise ValueError(f"label map {path!r} must be a JSON object "
                         '{"class id": category id or name}.') from None
    if path.lower().endswith(".txt"):
      return {index: line.strip() for index, line in enumerate(text.splitlines())}
    raise ValueError(f"label map {path!r}: use a .txt file (one name per line) or a .json "
                     "file ({\"class id\": category id or name}).")

  def __call__(self, detector_class):
    """The category id of a detector class, or None."""
    key = int(detector_class) + self.offset
    if self._table is None:
      return key if key in self.categories else None
    return self._table.get(key)

  def describe(self):
    info = {"offset": self.offset, "label_map": self.label_map}
    if self.unmatched_names:
      info["label_map_names_not_in_ground_truth"] = sorted(set(self.unmatched_names))
    return info


def encode_detections(detections):
  """Detections as compact JSON for points.csv: [[ymin, xmin, ymax, xmax, class, score]]."""
  return json.dumps([
      [*(round(float(v), _BOX_DIGITS) for v in box), int(c), round(float(s), _SCORE_DIGITS)]
      for box, c, s in zip(detections.boxes, detections.classes, detections.scores)],
      separators=(",", ":"))


def coco_results(detections_json, image_id, width, height, class_map):
  """COCO results (pixel boxes, category ids) of one stored point, and the
  number of detections whose class maps to no category."""
  results, unmapped = [], 0
  for ymin, xmin, ymax, xmax, detector_class, score in json.loads(detections_json):
    category = class_map(detector_class)
    if category is None:
      unmapped += 1
      continue
    results.append({"image_id": image_id, "category_id": category, "score": score,
                    "bbox": [xmin * width, ymin * height, (xmax - xmin) * width,
                             (ymax - ymin) * height]})
  return results, unmapped


class DetectionTask:
  """`dpc eval-detect`: a detector's COCO box metrics on the decoded images.

  Args:
    ground_truth: a `CocoGroundTruth`.
    detector: a `detectors.Detector`.
    class_map: a `ClassMap` from the detector's classes to the categories.
  """

  program = "dpc eval-detect"
  point_columns = POINT_COLUMNS
  int_columns = ("width", "height", "num_bytes", "num_detections")
  float_columns = ("bpp", "encode_ms", "decode_ms", "detect_ms")
  summary_columns = SUMMARY_COLUMNS
  directions = DIRECTIONS
  labels = LABELS
  table = ([(m, m, 3) for m in METRICS]
           + [("unmapped", "unmapped", 0), ("encode_ms", "enc ms", 1),
              ("decode_ms", "dec ms", 1), ("detect_ms", "det ms", 1)])
  DETECTOR_FILE = "detector.json"

  def __init__(self, ground_truth, detector, class_map):
    self.ground_truth, self.detector, self.class_map = ground_truth, detector, class_map

  def start(self, out_dir):
    # Points keep raw detections, so they are only valid for the detector that
    # made them: refuse to mix detectors in one output directory.
    path = os.path.join(out_dir, self.DETECTOR_FILE)
    identity = self.detector.identity()
    if os.path.exists(path):
      with open(path) as stream:
        previous = json.load(stream)
      if previous != identity:
        raise ValueError(
            f"{out_dir!r} holds detections of another detector ({previous}); this one is "
            f"{identity}. Use another --out.")
    else:
      report.write_text_atomic(path, json.dumps(identity, indent=2) + "\n")

  def check_image(self, path, image):
    self.ground_truth.check_image(path, image)

  def prepare(self):
    pass

  def measure(self, original, decoded):
    start = time.perf_counter()
    detections = self.detector.detect(decoded)
    return {"detect_ms": 1e3 * (time.perf_counter() - start),
            "num_detections": len(detections.scores),
            "detections": encode_detections(detections)}

  def needs_measuring(self, point):
    return False

  def summarise(self, points, codec_settings, images):
    """One row per codec setting: mean bpp and times, COCO metrics over its images."""

    def measure(group):
      results, unmapped, image_ids = [], 0, []
      for point in group:
        image_id = self.ground_truth.image_ids[point["image"]]
        image_ids.append(image_id)
        found, dropped = coco_results(point["detections"], image_id, point["width"],
                                      point["height"], self.class_map)
        results += found
        unmapped += dropped
      row = {"bpp": float(np.mean([p["bpp"] for p in group])),
             **self.ground_truth.evaluate(results, image_ids),
             "detections": len(results), "unmapped": unmapped}
      for column in ("encode_ms", "decode_ms", "detect_ms"):
        row[column] = float(np.mean([p[column] for p in group]))
      return row

    return report.summarise_settings(points, codec_settings, len(images), measure)

  def curve_metrics(self, rows):
    return [m for m in CURVE_METRICS if any(r.get(m) is not None for r in rows)]

  def describe(self):
    return {
        "metrics": list(METRICS),
        "about": ("bpp is averaged over the images of a setting; the COCO metrics "
                  "(pycocotools, bbox, up to 100 detections per image) are computed over all "
                  "of them at once. Rows marked `*` are missing images and are left out of "
                  "curves and BD-rates. `unmapped`: detections whose class maps to no "
                  "category of the ground truth (dropped)."),
        "detector": {"description": self.detector.describe(), **self.detector.identity()},
        "class_map": self.class_map.describe(),
        "ground_truth": self.ground_truth.describe(),
    }
