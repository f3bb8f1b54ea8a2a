"""Peak memory of decoding a large image: how much a legitimate 4K file asks for.

    python -m bench.bench_decode_memory [--sizes 512x768 1080x1920 2160x3840]

For each size, a fresh process builds the default-size model (seeded,
untrained: memory depends on the tensor sizes, not on the weights), encodes a
photo resized to that size, resets the kernel's peak-RSS counter
(/proc/self/clear_refs), decodes with `Codec.decode` and reads the peak
(VmHWM). The figure per pixel is what `max_pixels` should be set from on a
server: the decoder holds the synthesis transform's activations (192 channels
at half resolution) for the whole image.
"""

import argparse
import json
import os
import subprocess
import sys

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((512, 768), (1080, 1920), (2160, 3840))


def _status_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def measure(arch, height, width):
  """In this process: {rss_before_mb, peak_mb, decode_s, bytes} of one decode."""
  import time
  import numpy as np
  import tensorflow as tf
  from PIL import Image
  import dpc_tf
  images = common.load_images(common.default_images(), limit=1)
  photo = Image.fromarray(images[0][1][..., :3]).resize((width, height), Image.LANCZOS)
  tf.keras.utils.set_random_seed(0)
  codec = dpc_tf.Codec(dpc_tf.create_model(arch))
  data = codec.encode(np.asarray(photo))
  codec.decode(data)  # Warm-up: kernels and thread pools exist before measuring.
  before = _status_kib("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM to the current RSS.
  start = time.perf_counter()
  decoded = codec.decode(data)
  seconds = time.perf_counter() - start
  assert decoded.shape == (height, width, 3)
  return dict(arch=arch, height=height, width=width, pixels=height * width,
              bytes=len(data), rss_before_mb=before / 1024,
              peak_mb=_status_kib("VmHWM") / 1024, decode_s=seconds)


def run(out_dir="bench/results", sizes=SIZES, arch="hyperprior"):
  """Measures each size in its own process; writes decode_memory.{json,md}."""
  rows = []
  for height, width in sizes:
    print(f"decoding {width}x{height} ({arch}) in a fresh process ...", flush=True)
    output = subprocess.run(
        [sys.executable, "-m", "bench.bench_decode_memory", "--child", arch,
         str(height), str(width)],
        cwd=REPO, check=True, capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout
    row = json.loads(output.strip().splitlines()[-1])
    row["decode_mb"] = row["peak_mb"] - row["rss_before_mb"]
    row["bytes_per_pixel"] = row["decode_mb"] * 2**20 / row["pixels"]
    rows.append(row)
  table = common.markdown_table(
      ["image", "Mpixel", "RSS before decode (MB)", "peak while decoding (MB)",
       "added by decoding (MB)", "bytes / pixel", "decode s"],
      [[f"{r['width']}x{r['height']}", f"{r['pixels'] / 1e6:.2f}",
        f"{r['rss_before_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['decode_mb']:.0f}",
        f"{r['bytes_per_pixel']:.0f}", f"{r['decode_s']:.1f}"] for r in rows])
  note = (f"`Codec.decode` of the default-size `{arch}` model (192 filters, "
          "untrained, seeded), each size in a fresh process, peak RSS (VmHWM) "
          "after a warm-up decode")
  return common.write(out_dir, "decode_memory", dict(arch=arch, rows=rows),
                      f"## Decoder memory\n\n{note}.\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="*", default=[f"{h}x{w}" for h, w in SIZES],
                      help="HEIGHTxWIDTH")
  parser.add_argument("--arch", default="hyperprior")
  parser.add_argument("--out", default="bench/results")
  parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    arch, height, width = args.child
    print(json.dumps(measure(arch, int(height), int(width))))
    return 0
  sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
  run(args.out, sizes, args.arch)
  return 0


if __name__ == "__main__":
  sys.exit(main())
