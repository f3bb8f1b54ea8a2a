"""Rate-quality evaluation of learned and classical image codecs (`dpc eval`),
and detection accuracy against rate (`dpc eval-detect`, see `detection`).

    from dpc_tf import evaluation
    codecs = [evaluation.get_codec("jpeg420"), evaluation.get_codec("webp"),
              evaluation.ModelCodec("dpc", ["runs/l0.01", "runs/l0.03"])]
    summary = evaluation.evaluate(image_paths, codecs, "results/kodak", anchor="jpeg420")

Nothing here imports TensorFlow at import time (the CLI must start fast).
"""

from dpc_tf.evaluation.bdrate import BDResult, bd_rate, monotone_curve
from dpc_tf.evaluation.codecs import (DEFAULT_CODECS, EvalCodec, available_codecs,
                                      get_codec, library_versions, unavailable_reason)
from dpc_tf.evaluation.detection import ClassMap, CocoGroundTruth, DetectionTask
from dpc_tf.evaluation.detectors import (Detections, Detector, SavedModelDetector,
                                         TFLiteDetector, load_detector)
from dpc_tf.evaluation.metrics import Metrics, psnr
from dpc_tf.evaluation.model_codec import ModelCodec
from dpc_tf.evaluation.runner import POINT_COLUMNS, QualityTask, evaluate, read_points, run
from dpc_tf.images import ImageError
