"""Peak memory of decoding a large image: how much a legitimate 4K file asks for.

    python -m bench.bench_decode_memory [--sizes 512x768 1080x1920 2160x3840]

For each size, a process builds the default-size model (seeded, untrained:
memory depends on the tensor sizes, not on the weights) and encodes a photo
resized to that size; a fresh process loads the model, decodes the file with
`Codec.decode` and reads its peak RSS (VmHWM). The figure per pixel is what `max_pixels` should be set from on a
server: the decoder holds the synthesis transform's activations (192 channels
at half resolution) for the whole image.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((512, 768), (1080, 1920), (2160, 3840))


def _status_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _codec(arch):
  import tensorflow as tf
  import dpc_tf
  tf.keras.utils.set_random_seed(0)
  return dpc_tf.Codec(dpc_tf.create_model(arch))


def encode(arch, height, width, path):
  """In this process: encodes a photo resized to height x width into `path`."""
  import numpy as np
  from PIL import Image
  images = common.load_images(common.default_images(), limit=1)
  photo = Image.fromarray(images[0][1][..., :3]).resize((width, height), Image.LANCZOS)
  with open(path, "wb") as f:
    f.write(_codec(arch).encode(np.asarray(photo)))


def measure(arch, path):
  """In this process: {rss_before_mb, peak_mb, decode_s, bytes} of decoding `path`.

  A fresh process that has loaded the model and never coded anything: what
  the decode allocates is all in the peak (an allocator keeps memory it got,
  so a second decode in the same process would show no growth).
  """
  import time
  codec = _codec(arch)
  with open(path, "rb") as f:
    data = f.read()
  before = _status_kib("VmRSS")
  start = time.perf_counter()
  decoded = codec.decode(data)
  seconds = time.perf_counter() - start
  height, width, _ = decoded.shape
  return dict(arch=arch, height=height, width=width, pixels=height * width,
              bytes=len(data), rss_before_mb=before / 1024,
              peak_mb=_status_kib("VmHWM") / 1024, decode_s=seconds)


def _available_mb():
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("/proc/meminfo has no MemAvailable")


def _child(*args):
  return subprocess.run(
      [sys.executable, "-m", "bench.bench_decode_memory", "--child", *map(str, args)],
      cwd=REPO, check=True, capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout


def run(out_dir="bench/results", sizes=SIZES, arch="hyperprior"):
  """Measures each size in fresh processes; writes decode_memory.{json,md}."""
  rows, skipped = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for height, width in sizes:
      if rows:
        # Memory grows with the pixels: do not take a shared machine down.
        need = rows[-1]["peak_mb"] * height * width / rows[-1]["pixels"]
        if need > 0.7 * _available_mb():
          skipped.append(dict(height=height, width=width, estimated_peak_mb=need,
                              available_mb=_available_mb()))
          print(f"skipping {width}x{height}: needs ~{need / 1024:.1f} GB, "
                f"{_available_mb() / 1024:.1f} GB available", flush=True)
          continue
      path = os.path.join(workdir, f"{height}x{width}.dpc")
      print(f"encoding {width}x{height} ({arch}) ...", flush=True)
      _child("encode", arch, height, width, path)
      print(f"decoding it in a fresh process ...", flush=True)
      row = json.loads(_child("decode", arch, path).strip().splitlines()[-1])
      row["decode_mb"] = row["peak_mb"] - row["rss_before_mb"]
      row["bytes_per_pixel"] = row["decode_mb"] * 2**20 / row["pixels"]
      rows.append(row)
      print(row, flush=True)
  table = common.markdown_table(
      ["image", "Mpixel", "RSS before decode (MB)", "peak while decoding (MB)",
       "added by decoding (MB)", "bytes / pixel", "decode s"],
      [[f"{r['width']}x{r['height']}", f"{r['pixels'] / 1e6:.2f}",
        f"{r['rss_before_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['decode_mb']:.0f}",
        f"{r['bytes_per_pixel']:.0f}", f"{r['decode_s']:.1f}"] for r in rows])
  for s in skipped:
    table += (f"\n| {s['width']}x{s['height']} | {s['height'] * s['width'] / 1e6:.2f} | "
              f"not measured: ~{s['estimated_peak_mb']:.0f} MB peak (extrapolated), "
              f"{s['available_mb']:.0f} MB available | | | | |")
  note = (f"`Codec.decode` of the default-size `{arch}` model (192 filters, "
          "untrained, seeded) in a fresh process that has only loaded the "
          "model; peak RSS (VmHWM). Sizes whose extrapolated peak exceeds 70% of "
          "the available memory are skipped, not run")
  return common.write(out_dir, "decode_memory",
                      dict(arch=arch, rows=rows, skipped=skipped),
                      f"## Decoder memory\n\n{note}.\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="*", default=[f"{h}x{w}" for h, w in SIZES],
                      help="HEIGHTxWIDTH")
  parser.add_argument("--arch", default="hyperprior")
  parser.add_argument("--out", default="bench/results")
  parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child and args.child[0] == "encode":
    _, arch, height, width, path = args.child
    encode(arch, int(height), int(width), path)
    return 0
  if args.child:
    _, arch, path = args.child
    print(json.dumps(measure(arch, path)))
    return 0
  sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
  run(args.out, sizes, args.arch)
  return 0


if __name__ == "__main__":
  sys.exit(main())
