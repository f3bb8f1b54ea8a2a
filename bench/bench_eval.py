"""Throughput of `dpc eval`: images per second and ms per image per codec.

For each classical codec at one mid-sweep setting, every image is encoded,
decoded and measured (PSNR, MS-SSIM) exactly as `dpc eval` does, with each
stage timed. Metric graphs are traced (once per MS-SSIM scale choice) before timing, and
the metrics alone (PSNR + MS-SSIM of each image against a 1-LSB-different
copy, three rounds, median) are timed first, as the reference for the
"metrics ms" column. Run it in a process of its own (bench/run_all.py does):
after other benchmarks in the same process, MS-SSIM measured ~1.3 s per Kodak
image instead of ~0.1 s.

    python -m bench.bench_eval [--out bench/results] [images ...]

Default images: ../shared/data/kodak/*.png if present, else four scikit-image
photos. Writes bench_eval.json and bench_eval.md into --out; `run(out_dir,
images)` returns the same dict for bench/run_all.py.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One setting per codec, near the middle of the default sweeps (about 0.5-1 bpp
# on Kodak), so that codecs are timed at comparable rates.
BENCH_SETTINGS = {"jpeg420": 50, "jpeg444": 50, "jpeg2000": 0.5, "webp": 50, "avif": 50,
                  "hevc420": 40, "hevc444": 40, "jpegxl": 2.5}


def default_images():
  """Kodak if it is there, else a few scikit-image photos in a temp folder."""
  kodak = common.default_images()
  if kodak:
    return kodak
  import skimage.data
  from PIL import Image
  folder = tempfile.mkdtemp(prefix="bench_eval_")
  paths = []
  for name in ("astronaut", "coffee", "chelsea", "rocket"):
    path = os.path.join(folder, f"{name}.png")
    Image.fromarray(getattr(skimage.data, name)()).save(path)
    paths.append(path)
  return paths


def run(out_dir, images=None, codec_names=None):
  """Times the evaluation of each codec on `images`; writes and returns results."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from dpc_tf import images as image_io
  from dpc_tf.evaluation import codecs, runner
  from dpc_tf.evaluation.metrics import Metrics
  images = list(images or default_images())
  loaded = [image_io.read_image(path, alpha="composite") for path in images]
  metrics = Metrics()
  # Trace the metric graph for every image size before timing anything.
  for shape in {image.shape for image in loaded}:
    example = next(image for image in loaded if image.shape == shape)
    metrics(example, example)
  metrics_alone_ms = []
  for _ in range(3):
    for image in loaded:
      other = image ^ 1  # Different pixels, so nothing can short-cut.
      start = time.perf_counter()
      metrics(image, other)
      metrics_alone_ms.append(1e3 * (time.perf_counter() - start))
  results = {"machine": common.machine(),
             "images": {"count": len(images), "pixels": int(sum(i.shape[0] * i.shape[1]
                                                               for i in loaded)),
                        "first": images[0]},
             "metrics_alone_ms_per_image": float(np.median(metrics_alone_ms)),
             "versions": codecs.library_versions(), "codecs": {}, "skipped": {}}
  for name in codec_names or list(BENCH_SETTINGS):
    reason = codecs.unavailable_reason(name)
    if reason:
      results["skipped"][name] = reason
      print(f"bench_eval: skipping {name}: {reason}", file=sys.stderr)
      continue
    codec = codecs.get_codec(name)
    setting = BENCH_SETTINGS.get(name, codec.settings[len(codec.settings) // 2])
    encode_ms, decode_ms, metrics_ms, bpps = [], [], [], []
    started = time.perf_counter()
    for image in loaded:
      point_start = time.perf_counter()
      point = runner.measure_point(codec, setting, image, metrics)
      total_ms = 1e3 * (time.perf_counter() - point_start)
      encode_ms.append(point["encode_ms"])
      decode_ms.append(point["decode_ms"])
      metrics_ms.append(total_ms - point["encode_ms"] - point["decode_ms"])
      bpps.append(point["bpp"])
    seconds = time.perf_counter() - started
    results["codecs"][name] = {
        "setting": codec.setting_key(setting), "setting_name": codec.setting_name,
        "mean_bpp": float(np.mean(bpps)),
        "images_per_s": len(loaded) / seconds,
        "encode_ms_per_image": float(np.mean(encode_ms)),
        "decode_ms_per_image": float(np.mean(decode_ms)),
        "metrics_ms_per_image": float(np.mean(metrics_ms)),
        "total_ms_per_image": 1e3 * seconds / len(loaded)}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "bench_eval.json"), "w") as stream:
    json.dump(results, stream, indent=2)
    stream.write("\n")
  table = format_table(results)
  with open(os.path.join(out_dir, "bench_eval.md"), "w") as stream:
    stream.write(table)
  return results


def format_table(results):
  """A Markdown table of the timings."""
  machine = results["machine"]
  lines = [f"Eval throughput on {results['images']['count']} images "
           f"({results['images']['pixels'] / 1e6:.2f} Mpixel), {machine['cpus']} CPUs, "
           f"{machine['platform']}; in its own process.", "",
           f"PSNR + MS-SSIM alone: {results['metrics_alone_ms_per_image']:.1f} ms per "
           "image (median of 3 rounds).", "",
           "| codec | setting | bpp | images/s | encode ms | decode ms | metrics ms | total ms |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in results["codecs"].items():
    lines.append(f"| {name} | {r['setting_name']}={r['setting']} | {r['mean_bpp']:.3f} | "
                 f"{r['images_per_s']:.2f} | {r['encode_ms_per_image']:.1f} | "
                 f"{r['decode_ms_per_image']:.1f} | {r['metrics_ms_per_image']:.1f} | "
                 f"{r['total_ms_per_image']:.1f} |")
  for name, reason in results["skipped"].items():
    lines.append(f"| {name} | skipped: {reason} |||||||")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("images", nargs="*", help="images (default: Kodak or skimage photos)")
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
  parser.add_argument("--codecs", default=None, help="comma-separated codec names")
  args = parser.parse_args(argv)
  names = args.codecs.split(",") if args.codecs else None
  results = run(args.out, args.images or None, names)
  print(format_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
