"""The reported metrics against the way their reference implementations run.

    python -m bench.bench_metrics [--images 'kodak/*.png'] [--limit 8] [--rounds 5]

What `dpc eval` (and `dpc compress`, the demo, the training logs) spends per
image on quality metrics, side by side with:

- PSNR + MS-SSIM: tfc's models/bmshj2018.py, whose `compress` reports
  `tf.image.psnr` and `tf.image.ssim_multiscale` (max 255) on the decoded
  uint8 tensors, eagerly. Ours: `dpc_tf.metrics.psnr` + `msssim_and_db`.
- LPIPS-alex: the PyTorch reference (`lpips.LPIPS`, forward under
  `torch.no_grad`, inputs normalised as ours) with the same seeded trunk
  weights. Ours: `perceptual.LPIPS.measure`.
- A new image size: a mixed-size dataset (COCO, a user's photos) meets a new
  size at almost every image. Crops of `--sizes` distinct sizes, each measured
  once after a warm-up on another size: ours (graphs for any size) against the
  same metrics as a plain `tf.function` per size (what they were before),
  which traces for every new size.

Timing: one warm-up pass, then `--rounds` rounds over the images with the two
sides alternating (which goes first alternates too); per side the median over
rounds of the per-round total, divided by the image count; ratio ours /
reference of the medians. Ratios are the result on a shared machine.
"""

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

from bench import common


def _decoded_like(image, seed):
  """A deterministic 'decoded' version: the image with coding-like noise."""
  rng = np.random.default_rng(seed)
  noisy = image.astype(np.int16) + rng.integers(-6, 7, image.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _tfc_psnr_msssim(pair):
  import tensorflow as tf
  x, x_hat = (tf.convert_to_tensor(a) for a in pair)
  psnr = tf.squeeze(tf.image.psnr(x_hat, x, 255))
  msssim = tf.squeeze(tf.image.ssim_multiscale(x_hat, x, 255))
  msssim_db = -10. * tf.math.log(1 - msssim) / tf.math.log(10.)
  return float(psnr), float(msssim), float(msssim_db)


def _ours_psnr_msssim(pair):
  from dpc_tf import metrics
  original, decoded = pair
  return (metrics.psnr(original, decoded), *metrics.msssim_and_db(original, decoded))


def run(out_dir="bench/results", images=None, limit=8, rounds=5, sizes=8):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  import perceptual
  from perceptual import testing
  from perceptual.lpips import LPIPS
  from dpc_tf import metrics

  loaded = [image for _, image in common.load_images(images or common.default_images(),
                                                      limit)]
  pairs = [(image, _decoded_like(image, k)) for k, image in enumerate(loaded)]
  report = {"images": len(pairs), "rounds": rounds,
            "pixels_per_image": float(np.mean([p[0].shape[0] * p[0].shape[1]
                                               for p in pairs]))}

  # PSNR + MS-SSIM.
  ours, reference = common.time_interleaved([_ours_psnr_msssim, _tfc_psnr_msssim], rounds, pairs)
  values = [(_ours_psnr_msssim(pair), _tfc_psnr_msssim(pair)) for pair in pairs]
  report["psnr_msssim"] = {"ours_s": ours, "reference_s": reference,
                           "ratio": ours / reference,
                           "max_abs_psnr_difference": max(abs(a[0] - b[0]) for a, b in values),
                           "max_abs_msssim_difference": max(abs(a[1] - b[1])
                                                            for a, b in values),
                           "max_abs_msssim_db_difference": max(abs(a[2] - b[2])
                                                               for a, b in values),
                           "reference": "tfc bmshj2018 compress(): eager tf.image.psnr "
                                        "+ tf.image.ssim_multiscale on uint8"}

  # LPIPS-alex, seeded trunk + the reference's lin weights on both sides.
  import torch
  with tempfile.TemporaryDirectory() as directory:
    weights = os.path.join(directory, "alex.npz")
    testing.write_seeded_weights_file(
        weights, "alex", lin_state_dict=testing.reference_lin_state_dict("alex"))
    layer = LPIPS("alex", weights_path=weights)
  model = testing.reference_lpips("alex")
  units = [(metrics.unit_batch(a), metrics.unit_batch(b)) for a, b in pairs]

  def ours_lpips(unit):
    return float(layer.measure(*unit)[0])

  def reference_lpips(unit):
    with torch.no_grad():
      tensors = [torch.from_numpy(np.ascontiguousarray(u.transpose(0, 3, 1, 2)))
                 for u in unit]
      return float(model(*tensors, normalize=True).reshape(-1)[0])

  ours, reference = common.time_interleaved([ours_lpips, reference_lpips], rounds, units)
  report["lpips_alex"] = {
      "ours_s": ours, "reference_s": reference, "ratio": ours / reference,
      "max_abs_distance_difference": max(abs(ours_lpips(u) - reference_lpips(u))
                                         for u in units),
      "reference": f"lpips {getattr(sys.modules.get('lpips'), '__version__', '?')} "
                   f"(PyTorch {torch.__version__}), forward under no_grad"}

  # New sizes: every crop has a size not seen before by either side.
  base = pairs[0]
  height, width = base[0].shape[:2]
  crop_sizes = [(height - 8 * k - 1, width - 16 * k - 3) for k in range(1, sizes + 1)]
  crops = [(base[0][:h, :w], base[1][:h, :w]) for h, w in crop_sizes]

  def fresh_per_size():
    @tf.function
    def msssim_graph(x, y):  # measure_msssim until it took any size
      value = perceptual.msssim(x, y)
      return value, perceptual.msssim_db(value)

    lpips_graph = tf.function(layer)  # Metrics' LPIPS until it took any size

    def measure(pair):
      x, y = metrics.unit_batch(pair[0]), metrics.unit_batch(pair[1])
      msssim_graph(x, y)
      return float(lpips_graph(x, y)[0])
    measure((base[0][:64, :64], base[1][:64, :64]))  # warm-up on another size
    return measure

  def fresh_ours():
    def measure(pair):
      metrics.msssim_and_db(*pair)
      return float(layer.measure(metrics.unit_batch(pair[0]),
                                 metrics.unit_batch(pair[1]))[0])
    return measure

  seconds = {}
  for name, make in (("per_size_graphs", fresh_per_size), ("ours", fresh_ours)):
    measure = make()
    start = time.perf_counter()
    for pair in crops:
      measure(pair)
    seconds[name] = (time.perf_counter() - start) / len(crops)
  report["new_sizes"] = {"sizes": crop_sizes, "ours_s": seconds["ours"],
                         "per_size_graphs_s": seconds["per_size_graphs"],
                         "ratio": seconds["ours"] / seconds["per_size_graphs"],
                         "what": "MS-SSIM + LPIPS-alex of one image of a size not "
                                 "seen before"}
  report["versions"] = {"tensorflow": tf.__version__, "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads()}
  return common.write(out_dir, "metrics", report, markdown(report))


def markdown(report):
  rows = [
      ["PSNR + MS-SSIM", "tfc bmshj2018 (eager tf.image)",
       f"{1e3 * report['psnr_msssim']['ours_s']:.0f}",
       f"{1e3 * report['psnr_msssim']['reference_s']:.0f}",
       f"{report['psnr_msssim']['ratio']:.2f}",
       f"PSNR {report['psnr_msssim']['max_abs_psnr_difference']:.1e} dB, MS-SSIM "
       f"{report['psnr_msssim']['max_abs_msssim_difference']:.1e} "
       f"({report['psnr_msssim']['max_abs_msssim_db_difference']:.1e} dB)"],
      ["LPIPS-alex", "PyTorch lpips, no_grad",
       f"{1e3 * report['lpips_alex']['ours_s']:.0f}",
       f"{1e3 * report['lpips_alex']['reference_s']:.0f}",
       f"{report['lpips_alex']['ratio']:.2f}",
       f"{report['lpips_alex']['max_abs_distance_difference']:.1e}"],
      ["MS-SSIM + LPIPS, new image size", "a tf.function per size",
       f"{1e3 * report['new_sizes']['ours_s']:.0f}",
       f"{1e3 * report['new_sizes']['per_size_graphs_s']:.0f}",
       f"{report['new_sizes']['ratio']:.2f}", "same graphs"],
  ]
  header = ["metric", "reference", "ours ms/image", "reference ms/image",
            "ours / reference", "max abs difference"]
  return (f"## Reported metrics per image vs reference implementations\n\n"
          f"{report['images']} images of {report['pixels_per_image'] / 1e6:.2f} Mpixel "
          f"on average, median of {report['rounds']} interleaved rounds after a warm-up; "
          f"new sizes: {len(report['new_sizes']['sizes'])} crops of distinct sizes, one "
          "pass each.\n\n" + common.markdown_table(header, rows))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", default=None, help="glob (default: Kodak, else skimage)")
  parser.add_argument("--limit", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--sizes", type=int, default=8)
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  images = sorted(glob.glob(args.images)) if args.images else None
  run(args.out, images, args.limit, args.rounds, args.sizes)
  return 0


if __name__ == "__main__":
  sys.exit(main())
