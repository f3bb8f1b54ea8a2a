"""Peak memory of decoding a large image, whole and in tiles.

    python -m bench.bench_decode_memory [--sizes 512x768 1024x1024 1080x1920 2160x3840]

For each size, a process builds the default-size model (seeded, untrained:
memory depends on the tensor sizes, not on the weights) and encodes a photo
resized to that size; then, for each decode mode, a fresh process loads the
model, decodes the file with `Codec.decode(tile=...)` and reads its peak RSS
(VmHWM): "whole" (tile=0: the synthesis transform's 192-channel activations
at half resolution for the whole image) and "tiled" (tile=512: the latents
whole, the synthesis one 576x576 tile at a time). A whole decode whose
extrapolated peak would pass `--whole-limit-mb` (default 6000: the machine is
shared) is not run; its row gives the extrapolation, labelled.

The encoder is not tiled (the analysis transform at 4K needs as much memory
as the whole decode), so this benchmark encodes through the analysis
transform in overlapping 512-pixel tiles of its own (64-pixel margins, cut
at multiples of 16: the latents of the whole image, up to the transform's
reach at tile edges) and codes them with `compress_analyzed`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((512, 768), (1024, 1024), (1080, 1920), (2160, 3840))
TILE = 512


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


def _analyze_tiled(model, image, tile=512, margin=64):
  """The analysis transform's output for `image`, computed tile by tile."""
  import numpy as np
  import tensorflow as tf
  x = model._pad(tf.convert_to_tensor(image)).numpy()  # pylint: disable=protected-access
  _, height, width, _ = x.shape
  y = np.zeros((1, height // 16, width // 16, model.latent_depth), np.float32)
  for i in range(0, height, tile):
    for j in range(0, width, tile):
      i0, j0 = max(0, i - margin), max(0, j - margin)
      part = model.analysis_transform(
          tf.constant(x[:, i0:i + tile + margin, j0:j + tile + margin])).numpy()
      rows, cols = min(tile, height - i) // 16, min(tile, width - j) // 16
      y[:, i // 16:i // 16 + rows, j // 16:j // 16 + cols] = part[
          :, (i - i0) // 16:(i - i0) // 16 + rows, (j - j0) // 16:(j - j0) // 16 + cols]
  return y


def encode(arch, height, width, path):
  """In this process: encodes a photo resized to height x width into `path`."""
  import numpy as np
  from PIL import Image
  images = common.load_images(common.default_images(), limit=1)
  photo = np.asarray(Image.fromarray(images[0][1][..., :3]).resize(
      (width, height), Image.LANCZOS))
  codec = _codec(arch)
  y = _analyze_tiled(codec.model, photo)
  outputs = codec.model.compress_analyzed(y, np.array([height, width], np.int32))
  with open(path, "wb") as f:
    f.write(codec._pack(outputs, b"", (height, width, 3), 0.0))  # pylint: disable=protected-access


def measure(arch, path, tile):
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
  decoded = codec.decode(data, max_pixels=None, tile=tile)
  seconds = time.perf_counter() - start
  height, width, _ = decoded.shape
  return dict(arch=arch, height=height, width=width, pixels=height * width,
              tile=tile, bytes=len(data), rss_before_mb=before / 1024,
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


def run(out_dir="bench/results", sizes=SIZES, arch="hyperprior", whole_limit_mb=6000):
  """Measures each size and mode in fresh processes; writes decode_memory.{json,md}."""
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for height, width in sizes:
      path = os.path.join(workdir, f"{height}x{width}.dpc")
      print(f"encoding {width}x{height} ({arch}) ...", flush=True)
      _child("encode", arch, height, width, path)
      for mode, tile in (("whole", 0), ("tiled", TILE)):
        whole = [r for r in rows if r["mode"] == "whole" and "extrapolated" not in r]
        if mode == "whole" and whole:
          # Memory grows with the pixels: do not take a shared machine down.
          last = whole[-1]
          need = last["rss_before_mb"] + last["decode_mb"] * height * width / last["pixels"]
          if need > min(whole_limit_mb, 0.7 * _available_mb()):
            rows.append(dict(mode=mode, height=height, width=width,
                             pixels=height * width, extrapolated=True, peak_mb=need,
                             decode_mb=need - last["rss_before_mb"],
                             bytes_per_pixel=last["bytes_per_pixel"],
                             from_size=f"{last['width']}x{last['height']}"))
            print(f"not decoding {width}x{height} whole: ~{need / 1024:.1f} GB "
                  "(extrapolated)", flush=True)
            continue
        print(f"decoding it {mode} in a fresh process ...", flush=True)
        row = json.loads(_child("decode", arch, path, tile).strip().splitlines()[-1])
        row["mode"] = mode
        row["decode_mb"] = row["peak_mb"] - row["rss_before_mb"]
        row["bytes_per_pixel"] = row["decode_mb"] * 2**20 / row["pixels"]
        rows.append(row)
        print(row, flush=True)
  table = common.markdown_table(
      ["image", "Mpixel", "decode", "RSS before decode (MB)", "peak while decoding (MB)",
       "added by decoding (MB)", "bytes / pixel", "decode s"],
      [[f"{r['width']}x{r['height']}", f"{r['pixels'] / 1e6:.2f}",
        r["mode"] if r["mode"] == "whole" else f"tiled ({TILE} px)",
        "" if r.get("extrapolated") else f"{r['rss_before_mb']:.0f}",
        (f"~{r['peak_mb']:.0f} (extrapolated from {r['from_size']}, not run)"
         if r.get("extrapolated") else f"{r['peak_mb']:.0f}"),
        f"{r['decode_mb']:.0f}", f"{r['bytes_per_pixel']:.0f}",
        "" if r.get("extrapolated") else f"{r['decode_s']:.1f}"] for r in rows])
  note = (f"`Codec.decode` of the default-size `{arch}` model (192 filters, "
          "untrained, seeded) in a fresh process that has only loaded the "
          "model; peak RSS (VmHWM). Whole decodes whose extrapolated peak "
          f"exceeds {whole_limit_mb} MB are not run. Decode times are from a "
          f"loaded machine (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores at the end) and include tracing (the first decode "
          "of a fresh process: one graph whole, two tiled): not a speed comparison")
  return common.write(out_dir, "decode_memory",
                      dict(arch=arch, tile=TILE, rows=rows),
                      f"## Decoder memory\n\n{note}.\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="*", default=[f"{h}x{w}" for h, w in SIZES],
                      help="HEIGHTxWIDTH")
  parser.add_argument("--arch", default="hyperprior")
  parser.add_argument("--whole-limit-mb", type=float, default=6000)
  parser.add_argument("--out", default="bench/results")
  parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child and args.child[0] == "encode":
    _, arch, height, width, path = args.child
    encode(arch, int(height), int(width), path)
    return 0
  if args.child:
    _, arch, path, tile = args.child
    print(json.dumps(measure(arch, path, int(tile))))
    return 0
  sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
  run(args.out, sizes, args.arch, args.whole_limit_mb)
  return 0


if __name__ == "__main__":
  sys.exit(main())
