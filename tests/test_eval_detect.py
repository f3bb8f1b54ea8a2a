"""`dpc eval-detect`: COCO metrics against known answers, detectors, class maps,
and the evaluation end to end with a tiny detector built here (it finds
coloured squares on synthetic images whose boxes are known)."""

import argparse
import io
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from dpc_tf.evaluation import codecs, detect_cli, detection, detectors, runner
from dpc_tf.evaluation.model_codec import ModelCodec

pytest.importorskip("pycocotools")

# Detector classes 0, 1, 2 are these colours; the ground truth's categories are
# ids 1, 2, 3 (so --label-offset 1), named after them.
COLORS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"},
              {"id": 3, "name": "blue"}]
WIDTH, HEIGHT, SIDE = 96, 64, 20
# Squares (detector class, x, y) per image, all SIDE x SIDE, apart from each
# other and from the borders.
SCENES = [[(0, 8, 8), (1, 50, 30)], [(2, 30, 20)], [(0, 60, 6), (1, 10, 36), (2, 40, 36)],
          [(1, 70, 40)]]


def _make_instances(folder, scenes, extra_images=()):
  images, annotations = [], []
  for index, scene in enumerate(scenes):
    name = f"scene{index}.png"
    pixels = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    for detector_class, x, y in scene:
      pixels[y:y + SIDE, x:x + SIDE] = COLORS[detector_class]
      annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                          "category_id": detector_class + 1, "bbox": [x, y, SIDE, SIDE],
                          "area": SIDE * SIDE, "iscrowd": 0})
    Image.fromarray(pixels).save(os.path.join(folder, name))
    images.append({"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
  for name in extra_images:
    images.append({"id": len(images) + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
  path = os.path.join(folder, "instances.json")
  with open(path, "w") as stream:
    json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, stream)
  return path


def _square_finder():
  """A tf.Module whose `serve` finds one square per colour, as the TF Object
  Detection API's signature gives detections."""
  import tensorflow as tf

  class SquareFinder(tf.Module):

    def __init__(self):
      super().__init__()
      self.colors = tf.constant(COLORS, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def serve(self, images):
      x = tf.cast(images[0], tf.float32)
      size = tf.cast(tf.shape(x)[:2], tf.float32)
      # [K, H, W]: pixels close to each colour.
      mask = tf.reduce_max(tf.abs(x[None] - self.colors[:, None, None, :]), axis=-1) < 60
      rows, cols = tf.reduce_any(mask, axis=2), tf.reduce_any(mask, axis=1)
      found = tf.reduce_any(rows, axis=1)

      def extent(hits):  # First and one-past-last index of the hits, per colour.
        index = tf.range(tf.shape(hits)[1], dtype=tf.float32)[None]
        return (tf.reduce_min(tf.where(hits, index, 1e9), axis=1),
                tf.reduce_max(tf.where(hits, index, -1e9), axis=1) + 1)

      (ymin, ymax), (xmin, xmax) = extent(rows), extent(cols)
      boxes = tf.stack([ymin / size[0], xmin / size[1], ymax / size[0], xmax / size[1]], 1)
      filled = tf.reduce_sum(tf.cast(mask, tf.float32), axis=[1, 2])
      scores = filled / tf.maximum((ymax - ymin) * (xmax - xmin), 1.0)
      # Found colours first; the rest is padding beyond num_detections.
      order = tf.argsort(tf.cast(found, tf.int32), direction="DESCENDING", stable=True)
      keep = tf.cast(tf.gather(found, order), tf.float32)
      return {"detection_boxes": (tf.gather(boxes, order) * keep[:, None])[None],
              "detection_classes": tf.cast(order, tf.float32)[None],
              "detection_scores": (tf.gather(scores, order) * keep)[None],
              "num_detections": tf.reduce_sum(keep)[None]}

  return SquareFinder()


# The quantized SSD: a GRID x GRID grid of CELL-pixel anchors on SSD_SIZE^2 images.
GRID, CELL = 4, 8
SSD_SIZE = GRID * CELL


def _postprocess_signature(num_classes):
  """The attributes by which TFLite's converter puts its TFLite_Detection_PostProcess
  op in place of a function, as the Object Detection API's TFLite export does."""
  attributes = {"max_detections": "i: 10", "max_classes_per_detection": "i: 1",
                "detections_per_class": "i: 10", "use_regular_nms": "b: false",
                "nms_score_threshold": "f: 0.3", "nms_iou_threshold": "f: 0.6",
                "y_scale": "f: 10.0", "x_scale": "f: 10.0", "h_scale": "f: 5.0",
                "w_scale": "f: 5.0", "num_classes": f"i: {num_classes}"}
  return " ".join(['name: "TFLite_Detection_PostProcess"'] + [
      f'attr {{ key: "{key}" value {{ {value} }} }}' for key, value in attributes.items()])


def _quantized_ssd(folder):
  """A uint8-input, int8-quantized SSD whose anchors are the grid's cells and
  whose class scores say how close each cell's mean colour is to a square's:
  the structure of TF's COCO SSD-MobileNet in a few ops. Returns the .tflite path."""
  import tensorflow as tf

  @tf.function(experimental_implements=_postprocess_signature(len(COLORS)))
  def postprocess(box_encodings, class_predictions, anchors):
    del box_encodings, class_predictions, anchors  # The converter puts the op here.
    return (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0), tf.constant(0.0))

  centers = (np.arange(GRID) + 0.5) / GRID
  # (y center, x center, height, width), normalised, as the op takes anchors.
  anchors = np.array([[y, x, 1 / GRID, 1 / GRID] for y in centers for x in centers],
                     np.float32)
  kernel = (0.04 * (3 * np.eye(3) - 1)).astype(np.float32)  # 2 x_k - x_j - x_l

  @tf.function(input_signature=[tf.TensorSpec([1, SSD_SIZE, SSD_SIZE, 3], tf.float32)])
  def ssd(images):
    cells = tf.nn.avg_pool2d(images, CELL, CELL, "VALID")
    scores = tf.sigmoid(tf.nn.conv2d(cells, kernel[None, None], 1, "VALID") - 4.0)
    scores = tf.reshape(scores, [1, GRID * GRID, len(COLORS)])
    # Column 0 is the background class, which the op skips.
    class_predictions = tf.concat([tf.zeros_like(scores[..., :1]), scores], axis=-1)
    return postprocess(tf.zeros([1, GRID * GRID, 4]), class_predictions, tf.constant(anchors))

  module = tf.Module()
  module.ssd = ssd
  saved_model = os.path.join(folder, "ssd_saved_model")
  tf.saved_model.save(module, saved_model, signatures={"serving_default": ssd})

  def representative_images():
    for color in COLORS:
      image = np.full((1, SSD_SIZE, SSD_SIZE, 3), 128, np.float32)
      image[:, :CELL, :CELL] = color
      yield [image]
    yield [np.zeros((1, SSD_SIZE, SSD_SIZE, 3), np.float32)]
    yield [np.full((1, SSD_SIZE, SSD_SIZE, 3), 255, np.float32)]

  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative_images
  converter.inference_input_type = tf.uint8
  path = os.path.join(folder, "ssd_quantized.tflite")
  with open(path, "wb") as stream:
    stream.write(converter.convert())
  return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  """Four synthetic images, their instances.json (plus one missing file), the
  square finder as a SavedModel and as a TFLite model (any input size), and a
  quantized SSD with the post-processing op (TFLite)."""
  import tensorflow as tf
  folder = str(tmp_path_factory.mktemp("scenes"))
  instances = _make_instances(folder, SCENES, extra_images=["missing.png"])
  finder = _square_finder()
  saved_model = os.path.join(folder, "square_finder")
  tf.saved_model.save(finder, saved_model, signatures={"serving_default": finder.serve})
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [finder.serve.get_concrete_function()], finder)
  tflite = os.path.join(folder, "square_finder.tflite")
  with open(tflite, "wb") as stream:
    stream.write(converter.convert())
  return {"folder": folder, "instances": instances, "saved_model": saved_model,
          "tflite": tflite, "ssd": _quantized_ssd(folder)}


def _gt(tmp_path, annotations, width=200, height=200):
  path = str(tmp_path / "instances.json")
  with open(path, "w") as stream:
    json.dump({"images": [{"id": 7, "file_name": "a.png", "width": width, "height": height}],
               "annotations": [dict(a, id=i + 1, image_id=7, iscrowd=0,
                                    area=a["bbox"][2] * a["bbox"][3])
                               for i, a in enumerate(annotations)],
               "categories": CATEGORIES}, stream)
  return detection.CocoGroundTruth(path, str(tmp_path))


def _result(bbox, category=1, score=0.9):
  return {"image_id": 7, "category_id": category, "bbox": bbox, "score": score}


def test_coco_metrics_known_answers(tmp_path):
  # One large object (100x100 > 96^2 px): a box with IoU 0.72 is a hit at the
  # IoU thresholds 0.50 ... 0.70 (5 of 10) and a miss above.
  gt = _gt(tmp_path, [{"category_id": 1, "bbox": [0, 0, 100, 100]}])
  exact = gt.evaluate([_result([0, 0, 100, 100])], [7])
  assert exact["ap_small"] is None and exact["ap_medium"] is None  # no such objects
  assert [exact[m] for m in ("map", "ap50", "ap75", "ap_large")] == pytest.approx([1.0] * 4)
  partial = gt.evaluate([_result([0, 0, 100, 72])], [7])
  assert partial["map"] == pytest.approx(0.5) and partial["ap50"] == pytest.approx(1.0)
  assert partial["ap75"] == 0.0 and partial["ap_large"] == pytest.approx(0.5)
  # Nothing detected, or only the wrong class: 0, not an error.
  assert gt.evaluate([], [7])["map"] == 0.0
  assert gt.evaluate([_result([0, 0, 100, 100], category=2)], [7])["map"] == 0.0
  # Two small objects, one found: precision 1 up to recall 0.5, i.e. 51 of
  # COCO's 101 recall points.
  gt = _gt(tmp_path, [{"category_id": 1, "bbox": [10, 10, 20, 20]},
                      {"category_id": 1, "bbox": [100, 100, 20, 20]}])
  half = gt.evaluate([_result([10, 10, 20, 20])], [7])
  assert half["map"] == pytest.approx(51 / 101) and half["ap_small"] == pytest.approx(51 / 101)
  # A confident false positive ranked above the hit: precision 1/2 at recall 0.5.
  ranked = gt.evaluate([_result([10, 10, 20, 20], score=0.5),
                        _result([150, 10, 20, 20], score=0.9)], [7])
  assert ranked["map"] == pytest.approx(0.5 * 51 / 101)


def test_class_map_is_explicit(tmp_path):
  categories = {c["id"]: c["name"] for c in CATEGORIES}
  plain = detection.ClassMap(1, categories)
  assert [plain(c) for c in (0, 1, 2, 3)] == [1, 2, 3, None]
  # TF's COCO label files start with "???" for class -1: line k names class k - 1.
  labels = tmp_path / "labels.txt"
  labels.write_text("???\nblue\nred\n")
  mapped = detection.ClassMap(1, categories, str(labels))
  assert [mapped(c) for c in (-1, 0, 1, 2)] == [None, 3, 1, None]
  assert mapped.describe()["label_map_names_not_in_ground_truth"] == ["???"]
  table = tmp_path / "labels.json"
  table.write_text(json.dumps({"0": 2, "1": "red"}))
  assert [detection.ClassMap(0, categories, str(table))(c) for c in (0, 1, 2)] == [2, 1, None]
  table.write_text(json.dumps({"0": 9}))
  with pytest.raises(ValueError, match="category id 9"):
    detection.ClassMap(0, categories, str(table))
  labels.write_text("cat\ndog\n")
  with pytest.raises(ValueError, match="no name of label map"):
    detection.ClassMap(0, categories, str(labels))
  with pytest.raises(ValueError, match="integer"):
    detection.ClassMap(None, categories)


def test_detectors_find_the_squares(scenes):
  image = np.asarray(Image.open(os.path.join(scenes["folder"], "scene2.png")))
  found = detectors.load_detector(scenes["saved_model"]).detect(image)
  assert sorted(found.classes.tolist()) == [0, 1, 2]
  for detector_class, x, y in SCENES[2]:
    [box] = found.boxes[found.classes == detector_class]
    np.testing.assert_allclose(box, [y / HEIGHT, x / WIDTH, (y + SIDE) / HEIGHT,
                                     (x + SIDE) / WIDTH], atol=1e-6)
  # The TFLite model (signature outputs) takes any size: the image as it is.
  tflite = detectors.load_detector(scenes["tflite"])
  assert tflite.input_size is None and tflite.input_dtype == "uint8"
  for _ in range(2):  # The input is resized once, then reused.
    same = tflite.detect(image)
    np.testing.assert_allclose(same.boxes, found.boxes, atol=1e-6)
    np.testing.assert_array_equal(same.classes, found.classes)
  with pytest.raises(ValueError, match="uint8 RGB"):
    tflite.detect(image[..., :2])
  with pytest.raises(ValueError, match="float models only"):
    detectors.TFLiteDetector(scenes["tflite"], input_mean=127.5, input_std=127.5)
  with pytest.raises(ValueError, match="neither a .tflite file nor a SavedModel"):
    detectors.load_detector(scenes["instances"])


def test_quantized_ssd_with_the_postprocessing_op(scenes):
  ssd = detectors.load_detector(scenes["ssd"])
  assert ssd.input_size == (SSD_SIZE, SSD_SIZE) and ssd.input_dtype == "uint8"
  # Squares on cells (row, column); a 2x larger image is resized to the input.
  squares = {0: (1, 2), 2: (3, 0)}
  for scale in (1, 2):
    image = np.full((SSD_SIZE * scale, SSD_SIZE * scale, 3), 128, np.uint8)
    for detector_class, (row, column) in squares.items():
      side = CELL * scale
      image[row * side:(row + 1) * side, column * side:(column + 1) * side] = \
          COLORS[detector_class]
    found = ssd.detect(image)
    assert sorted(found.classes.tolist()) == sorted(squares)
    for detector_class, (row, column) in squares.items():
      [box] = found.boxes[found.classes == detector_class]
      np.testing.assert_allclose(box, np.array([row, column, row + 1, column + 1]) / GRID,
                                 atol=1e-6)
    assert (found.scores > 0.3).all()


class _Shift(codecs.EvalCodec):
  """Stores the image as PNG, moved right by `setting` pixels: a codec whose
  effect on the boxes is known."""

  setting_name = "shift"

  def encode(self, image, setting):
    buffer = io.BytesIO()
    Image.fromarray(np.roll(image, int(setting), axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()

  def decode(self, data, setting):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

  def describe(self):
    return "test codec: PNG, shifted right"


def _task(scenes, offset=1):
  gt = detection.CocoGroundTruth(scenes["instances"], scenes["folder"])
  return detection.DetectionTask(gt, detectors.load_detector(scenes["saved_model"]),
                                 detection.ClassMap(offset, gt.categories))


def test_known_answers_end_to_end(scenes, tmp_path, capsys):
  # Moving every 20-px square by 3 px gives IoU 17*20 / (23*20) = 0.74: a hit
  # at the IoU thresholds 0.50 ... 0.70, so mAP 0.5, AP50 1, AP75 0; by 8 px
  # IoU 12/28 = 0.43 misses everywhere.
  task = _task(scenes)
  missing_model = ModelCodec("learned", [str(tmp_path / "no_such_model")])
  out = str(tmp_path / "out")
  summary = runner.run(task, task.ground_truth.paths, [_Shift("shift", [0, 3, 8]), missing_model],
                       out, anchor="shift", progress=False)
  rows = {r["setting"]: r for r in summary["rows"] if r["codec"] == "shift"}
  assert rows["0"]["map"] == pytest.approx(1.0) and rows["0"]["ap_small"] == pytest.approx(1.0)
  assert rows["3"]["map"] == pytest.approx(0.5) and rows["3"]["ap50"] == pytest.approx(1.0)
  assert rows["3"]["ap75"] == 0.0
  assert rows["8"]["map"] == 0.0
  assert all(r["n_images"] == 4 and r["complete"] and r["unmapped"] == 0 for r in rows.values())
  assert rows["0"]["detections"] == sum(len(s) for s in SCENES)
  # The missing file and the model that cannot load are reported, not fatal.
  stages = {(f["codec"], f["stage"]) for f in summary["failures"]}
  assert stages == {(None, "read"), ("learned", "prepare")}
  assert summary["images"]["unreadable"] == [os.path.join(scenes["folder"], "missing.png")]
  err = capsys.readouterr().err
  assert "dpc eval-detect: FAILED" in err and "no such file" in err
  points = runner.read_points(os.path.join(out, "points.csv"), task)
  assert len(points) == 12 and all(p["detect_ms"] > 0 for p in points)
  assert json.load(open(os.path.join(out, "detector.json")))["kind"] == "savedmodel"


@pytest.fixture(scope="module")
def cli_run(scenes, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("detect") / "out")
  argv = ["--instances", scenes["instances"], "--images", scenes["folder"],
          "--detector", scenes["saved_model"], "--label-offset", "1", "--out", out,
          "--codecs", "original,jpeg420", "--settings", "jpeg420=5,50,95", "--no-progress"]
  assert run_cli(argv) == 0
  return argv, out


def run_cli(argv):
  return detect_cli.run(detect_cli.add_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_cli_writes_points_summary_and_plots(scenes, cli_run):
  _, out = cli_run
  summary = json.load(open(os.path.join(out, "summary.json")))
  rows = {(r["codec"], r["setting"]): r for r in summary["rows"]}
  original = rows[("original", "as-given")]
  # The original PNGs: their own size, and every square found exactly.
  sizes = [os.path.getsize(os.path.join(scenes["folder"], f"scene{i}.png")) for i in range(4)]
  assert original["bpp"] == pytest.approx(np.mean([8 * s / (WIDTH * HEIGHT) for s in sizes]))
  assert original["map"] == pytest.approx(1.0)
  assert rows[("jpeg420", "95")]["map"] == pytest.approx(1.0)
  assert rows[("jpeg420", "5")]["bpp"] < rows[("jpeg420", "95")]["bpp"]
  assert summary["anchor"] == "jpeg420"  # The original files are not a curve.
  assert "original" not in summary["bd_rate"]["map"]
  assert summary["bd_rate"]["map"]["jpeg420"]["bd_rate"] == pytest.approx(0.0, abs=1e-9)
  assert summary["class_map"] == {"offset": 1, "label_map": None}
  assert summary["ground_truth"]["annotations"] == sum(len(s) for s in SCENES)
  assert summary["versions"]["pycocotools"]
  header = open(os.path.join(out, "points.csv")).readline().strip().split(",")
  assert header == detection.POINT_COLUMNS
  columns = open(os.path.join(out, "summary.csv")).readline().strip().split(",")
  assert columns == detection.SUMMARY_COLUMNS
  for metric in ("map", "ap50"):
    with Image.open(os.path.join(out, f"rd_{metric}.png")) as plot:
      assert plot.format == "PNG"
    svg = ElementTree.parse(os.path.join(out, f"rd_{metric}.svg")).getroot()
    assert svg.tag.endswith("svg")
  text = open(os.path.join(out, "summary.md")).read()
  assert "# dpc eval-detect summary" in text and "| original | as-given | 4 |" in text
  assert "COCO mAP@[.5:.95] at equal rate" in text


def test_cli_resumes_and_remaps_without_detecting_again(cli_run, capsys):
  argv, out = cli_run
  before = open(os.path.join(out, "points.csv")).read()
  assert run_cli(argv) == 0
  assert open(os.path.join(out, "points.csv")).read() == before
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["run"]["points_measured"] == 0 and summary["run"]["points_reused"] == 16
  # A wrong offset maps the squares to other categories (or none): detections
  # are the stored ones, the metrics collapse and the unmapped ones are counted.
  wrong = argv[:argv.index("--label-offset")] + ["--label-offset", "2"] + argv[
      argv.index("--label-offset") + 2:]
  assert run_cli(wrong) == 0
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["run"]["points_measured"] == 0
  original = summary["rows"][0]
  assert original["map"] == 0.0 and original["unmapped"] == 2  # the blue squares
  assert run_cli(argv) == 0  # Back to the right mapping for the other tests.


def test_cli_refuses_bad_input(scenes, cli_run, tmp_path, capsys):
  argv, out = cli_run
  without_offset = [a for i, a in enumerate(argv)
                    if a != "--label-offset" and argv[i - 1] != "--label-offset"]
  assert run_cli(without_offset) == 2
  assert "give --label-offset" in capsys.readouterr().err
  # Another detector in the same output directory would mix detections.
  other = argv[:argv.index("--detector") + 1] + [scenes["tflite"]] + argv[
      argv.index("--detector") + 2:]
  assert run_cli(other) == 2
  assert "detections of another detector" in capsys.readouterr().err
  assert run_cli(["--instances", str(tmp_path / "none.json"), "--images", str(tmp_path),
                  "--detector", scenes["tflite"], "--label-offset", "1",
                  "--out", str(tmp_path / "o")]) == 2
  assert "cannot read the ground truth" in capsys.readouterr().err


def test_image_size_must_match_the_annotations(scenes, tmp_path):
  gt = detection.CocoGroundTruth(scenes["instances"], scenes["folder"])
  path = gt.paths[0]
  with pytest.raises(detection.ImageError, match="EXIF rotation"):
    gt.check_image(path, np.zeros((WIDTH, HEIGHT, 3), np.uint8))


# ../shared/data beside the checkout (or $DPC_SHARED_DATA, e.g. from a worktree).
DATA = os.path.join(os.environ.get("DPC_SHARED_DATA") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"), "detection")


@pytest.mark.slow
def test_real_detector_on_coco128(tmp_path):
  """The quantized COCO SSD-MobileNet (TFLite post-processing op) on coco128:
  the figures measured independently with pycocotools (data README)."""
  coco = os.path.join(DATA, "coco128")
  model = os.path.join(DATA, "ssd_mobilenet_v1_coco", "detect.tflite")
  if not (os.path.isdir(coco) and os.path.isfile(model)):
    pytest.skip(f"../shared/data/detection (coco128 and ssd_mobilenet_v1_coco) is not at "
                f"{os.path.normpath(DATA)}")
  detector = detectors.load_detector(model, num_threads=1)
  assert detector.input_size == (300, 300) and detector.input_dtype == "uint8"
  gt = detection.CocoGroundTruth(os.path.join(coco, "instances.json"),
                                 os.path.join(coco, "images"))
  assert len(gt.paths) == 128 and gt.num_annotations == 939
  task = detection.DetectionTask(gt, detector, detection.ClassMap(1, gt.categories))
  summary = runner.run(task, gt.paths, [codecs.get_codec("original"),
                                        codecs.get_codec("jpeg420", [10])],
                       str(tmp_path / "out"), anchor=None, progress=False)
  rows = {r["codec"]: r for r in summary["rows"]}
  assert rows["original"]["map"] == pytest.approx(0.213, abs=0.002)
  assert rows["original"]["ap50"] == pytest.approx(0.341, abs=0.002)
  assert rows["jpeg420"]["map"] == pytest.approx(0.172, abs=0.003)
  assert rows["jpeg420"]["ap50"] == pytest.approx(0.280, abs=0.003)
  assert rows["original"]["unmapped"] < 0.02 * rows["original"]["detections"]
