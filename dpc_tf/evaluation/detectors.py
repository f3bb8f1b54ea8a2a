"""Object detectors that `dpc eval-detect` runs on decoded images.

A detector takes a uint8 RGB image [height, width, 3] and returns `Detections`:
boxes normalised to the image (ymin, xmin, ymax, xmax in [0, 1]), the
detector's own class ids (integers, mapped to the ground truth's categories by
`detection.ClassMap`, never here) and scores. Plug in your own by subclassing
`Detector` (implement `detect` and `identity`).

Two kinds are built in, for the two forms TensorFlow detectors are shipped in:

- `SavedModelDetector`: a TF Object Detection API SavedModel, signature
  `serving_default`: uint8 [1, H, W, 3] -> `detection_boxes` [1, N, 4],
  `detection_classes` [1, N], `detection_scores` [1, N], `num_detections` [1].
  The image is given at its own size (the model resizes it).
- `TFLiteDetector`: a TFLite model with `tf.lite.Interpreter`, e.g. the
  quantized COCO SSD-MobileNet, whose four outputs come from the
  `TFLite_Detection_PostProcess` op (boxes, classes, scores, count, in that
  order, found by the op whatever the outputs are named) or from a signature
  with the Object Detection API's output names. The
  image is resized (bilinear) to the model's fixed input size; uint8 inputs take
  the pixels as they are (the model's input quantization maps them), float
  inputs need the normalisation stated (`input_mean`, `input_std`).

`load_detector(path)` picks the kind from what the path is: a `.tflite` file or
a SavedModel directory.
"""

import dataclasses
import hashlib
import os

import numpy as np

from perceptual.lpips_weights import file_sha256


@dataclasses.dataclass
class Detections:
  """What a detector found in one image."""
  boxes: np.ndarray    # float32 [N, 4]: ymin, xmin, ymax, xmax, normalised to [0, 1]
  classes: np.ndarray  # int64 [N]: the detector's own class ids
  scores: np.ndarray   # float32 [N]

  def __post_init__(self):
    self.boxes = np.clip(np.asarray(self.boxes, np.float32).reshape(-1, 4), 0.0, 1.0)
    self.classes = np.round(np.asarray(self.classes, np.float64)).astype(np.int64).reshape(-1)
    self.scores = np.asarray(self.scores, np.float32).reshape(-1)
    if not len(self.boxes) == len(self.classes) == len(self.scores):
      raise ValueError(f"a detector returned {len(self.boxes)} boxes, {len(self.classes)} "
                       f"classes and {len(self.scores)} scores; they must match.")


class Detector:
  """Base class: finds objects in uint8 RGB images."""

  def detect(self, image):
    """Returns `Detections` for a uint8 array [height, width, 3]."""
    raise NotImplementedError

  def identity(self):
    """A JSON-able dict that changes whenever the detections could (the model
    file's hash, input options); a resumed evaluation checks it."""
    raise NotImplementedError

  def describe(self):
    """One line for the summary."""
    return type(self).__name__


def _check_image(image):
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError("detectors take uint8 RGB images [height, width, 3]; got dtype "
                     f"{image.dtype} and shape {image.shape}.")
  return image


def _directory_sha256(path):
  """SHA-256 over the relative names and contents of every file under `path`."""
  digest = hashlib.sha256()
  for root, directories, files in os.walk(path):
    directories.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode() + b"\0")
      digest.update(file_sha256(full).encode())
  return digest.hexdigest()


class SavedModelDetector(Detector):
  """A TF Object Detection API SavedModel (signature `serving_default` by default)."""

  OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")

  def __init__(self, path, signature="serving_default"):
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
      raise ValueError(f"{path!r} is not a SavedModel directory (no saved_model.pb).")
    import tensorflow as tf
    self.path = path
    self.signature = signature
    self._model = tf.saved_model.load(path)
    signatures = dict(self._model.signatures)
    if signature not in signatures:
      raise ValueError(f"SavedModel {path!r} has no signature {signature!r}; it has "
                       f"{sorted(signatures)}.")
    self._function = signatures[signature]
    inputs = self._function.structured_input_signature[1]
    if len(inputs) != 1:
      raise ValueError(f"signature {signature!r} of {path!r} takes inputs {sorted(inputs)}; "
                       "a detector takes one uint8 image batch [1, H, W, 3].")
    [(self._input_name, spec)] = inputs.items()
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
      raise ValueError(
          f"signature {signature!r} of {path!r} takes {spec.dtype.name} {spec.shape}; "
          "expected a uint8 image batch [1, H, W, 3] (export the Object Detection API "
          "model with input_type=image_tensor).")
    missing = [k for k in self.OUTPUTS if k not in self._function.structured_outputs]
    if missing:
      raise ValueError(f"signature {signature!r} of {path!r} lacks the outputs {missing}; it "
                       f"has {sorted(self._function.structured_outputs)}.")
    self._sha256 = _directory_sha256(path)

  def detect(self, image):
    import tensorflow as tf
    image = _check_image(image)
    outputs = self._function(**{self._input_name: tf.constant(image[None])})
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    return Detections(np.asarray(outputs["detection_boxes"])[0, :count],
                      np.asarray(outputs["detection_classes"])[0, :count],
                      np.asarray(outputs["detection_scores"])[0, :count])

  def identity(self):
    return {"kind": "savedmodel", "signature": self.signature, "sha256": self._sha256}

  def describe(self):
    return (f"TF Object Detection API SavedModel {self.path} (signature {self.signature}, "
            f"sha256 {self._sha256[:12]})")


class TFLiteDetector(Detector):
  """A TFLite detection model run with `tf.lite.Interpreter`.

  Args:
    path: the .tflite file.
    num_threads: interpreter threads (None: TensorFlow Lite's default).
    input_mean, input_std: for float inputs, the model sees
      (pixel - input_mean) / input_std; required for them, refused for uint8.
  """

  _POSTPROCESS = "TFLite_Detection_PostProcess"
  # The op's outputs, in the order it defines them.
  _POSTPROCESS_ORDER = ("boxes", "classes", "scores", "count")
  _SIGNATURE_NAMES = {"detection_boxes": "boxes", "detection_classes": "classes",
                      "detection_scores": "scores", "num_detections": "count"}

  def __init__(self, path, num_threads=None, input_mean=None, input_std=None):
    if not os.path.isfile(path):
      raise ValueError(f"TFLite model {path!r} does not exist.")
    import tensorflow as tf
    self.path = path
    self.num_threads = num_threads
    self._interpreter = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
    self._interpreter.allocate_tensors()
    inputs = self._interpreter.get_input_details()
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][-1] != 3:
      raise ValueError(f"TFLite model {path!r} has inputs "
                       f"{[(d['name'], d['shape'].tolist()) for d in inputs]}; a detector "
                       "takes one image batch [1, H, W, 3].")
    self._input = inputs[0]
    self.input_dtype = np.dtype(self._input["dtype"]).name
    if self.input_dtype == "uint8":
      if input_mean is not None or input_std is not None:
        raise ValueError(f"{path!r} takes uint8 pixels (its input quantization "
                         f"{self._input['quantization']} maps them); --input-mean/--input-std "
                         "apply to float models only.")
    elif self.input_dtype == "float32":
      if input_mean is None or input_std is None:
        raise ValueError(
            f"{path!r} takes float32 input: give the normalisation it was trained with, "
            "input_mean and input_std (the model sees (pixel - mean) / std; e.g. 127.5 and "
            "127.5 for [-1, 1], 0 and 255 for [0, 1]).")
    else:
      raise ValueError(f"{path!r} takes {self.input_dtype} input; uint8 and float32 models "
                       "are supported.")
    self.input_mean, self.input_std = input_mean, input_std
    # -1 in the shape signature: the model takes any size (no resizing).
    signature = self._input.get("shape_signature", self._input["shape"])
    self._dynamic = bool(signature[1] < 0 or signature[2] < 0)
    self._outputs = self._output_indices()
    self._sha256 = file_sha256(path)

  def _output_indices(self):
    """{"boxes"|"classes"|"scores"|"count": tensor index} of the detections."""
    details = self._interpreter.get_output_details()
    outputs = {int(d["index"]) for d in details}
    # TF's SSD models end with the post-processing op: its four outputs in the
    # op's order, whatever names the converter gave them (TF1 and TF2 exports
    # differ). `_get_ops_details` is how the Python API lists ops (TF >= 2.2).
    for op in self._interpreter._get_ops_details():  # pylint: disable=protected-access
      found = [int(i) for i in op["outputs"]]
      if op["op_name"] == self._POSTPROCESS and len(found) == 4 and set(found) <= outputs:
        return dict(zip(self._POSTPROCESS_ORDER, found))
    signatures = self._interpreter.get_signature_list()
    if len(signatures) == 1:
      [key] = signatures
      runner_outputs = self._interpreter.get_signature_runner(key).get_output_details()
      if all(name in runner_outputs for name in self._SIGNATURE_NAMES):
        return {self._SIGNATURE_NAMES[n]: runner_outputs[n]["index"] for n in self._SIGNATURE_NAMES}
    raise ValueError(
        f"cannot tell the outputs of {self.path!r} apart: expected the four outputs of a "
        f"{self._POSTPROCESS} op or a signature with outputs {sorted(self._SIGNATURE_NAMES)}; "
        f"found outputs {sorted(d['name'] for d in details)} and signatures {signatures}.")

  @property
  def input_size(self):
    """(height, width) the image is resized to, or None for any size."""
    return None if self._dynamic else tuple(int(v) for v in self._input["shape"][1:3])

  def detect(self, image):
    image = _check_image(image)
    interpreter = self._interpreter
    if self._dynamic:
      if tuple(self._input["shape"][1:3]) != image.shape[:2]:
        interpreter.resize_tensor_input(self._input["index"], [1, *image.shape])
        interpreter.allocate_tensors()
        self._input = interpreter.get_input_details()[0]
      pixels = image
    else:
      from PIL import Image
      height, width = self.input_size
      pixels = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    if self.input_dtype == "float32":
      pixels = (pixels.astype(np.float32) - self.input_mean) / self.input_std
    interpreter.set_tensor(self._input["index"], pixels[None])
    interpreter.invoke()
    out = {k: interpreter.get_tensor(i) for k, i in self._outputs.items()}
    count = int(np.asarray(out["count"]).reshape(-1)[0])
    return Detections(out["boxes"].reshape(-1, 4)[:count], out["classes"].reshape(-1)[:count],
                      out["scores"].reshape(-1)[:count])

  def identity(self):
    return {"kind": "tflite", "sha256": self._sha256, "input_mean": self.input_mean,
            "input_std": self.input_std}

  def describe(self):
    size = "any size" if self.input_size is None else "x".join(map(str, self.input_size[::-1]))
    return (f"TFLite detector {self.path} ({self.input_dtype} input, {size}, "
            f"sha256 {self._sha256[:12]})")


def load_detector(path, signature="serving_default", num_threads=None, input_mean=None,
                  input_std=None):
  """A `TFLiteDetector` for a .tflite file, a `SavedModelDetector` for a SavedModel."""
  if os.path.isdir(path):
    if input_mean is not None or input_std is not None:
      raise ValueError("--input-mean/--input-std apply to TFLite models; a SavedModel "
                       "detector takes uint8 pixels.")
    return SavedModelDetector(path, signature=signature)
  if os.path.isfile(path) and path.lower().endswith(".tflite"):
    return TFLiteDetector(path, num_threads=num_threads, input_mean=input_mean,
                          input_std=input_std)
  raise ValueError(f"detector {path!r} is neither a .tflite file nor a SavedModel directory.")
