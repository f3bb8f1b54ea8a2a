"""Codec speed: encode/decode time per model and image, and `dpc` end to end.

    python -m bench.bench_codec                       # untrained default-size models + zoo:dpc
    python -m bench.bench_codec --models runs/a/model runs/b/model --images 'img/*.png'

For each model: ms per image to encode and decode (after a warm-up image),
megapixels per second, bpp (of the untrained or given model), and the wall time
of one `dpc compress` and one `dpc decompress` of the first image in a fresh
process, TensorFlow's import and model loading included.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import common

DEFAULT_ARCHS = ("factorized", "hyperprior", "mean_scale_hyperprior", "channelwise")


def _cli_seconds(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "dpc_tf.cli", *args], check=True,
                 env=env, capture_output=True)
  return time.perf_counter() - start


def bench_model(model_dir, named_images, paths, workdir):
  import dpc_tf
  start = time.perf_counter()
  codec = dpc_tf.load_codec(model_dir)
  load_s = time.perf_counter() - start
  quality = codec.model.default_quality  # As `dpc compress`; None if fixed-rate.
  codec.decode(codec.encode(named_images[0][1], quality=quality))  # Warm-up.
  enc, dec, bpp, pixels = [], [], [], 0
  for _, image in named_images:
    t = time.perf_counter()
    data = codec.encode(image, quality=quality)
    enc.append(time.perf_counter() - t)
    t = time.perf_counter()
    codec.decode(data)
    dec.append(time.perf_counter() - t)
    bpp.append(8 * len(data) / (image.shape[0] * image.shape[1]))
    pixels += image.shape[0] * image.shape[1]
  row = dict(model=model_dir, architecture=codec.model.architecture,
             config=codec.model.get_config(), images=len(named_images),
             load_s=load_s, encode_ms=1e3 * np.mean(enc), decode_ms=1e3 * np.mean(dec),
             encode_mpx_s=pixels / 1e6 / sum(enc), decode_mpx_s=pixels / 1e6 / sum(dec),
             bpp=float(np.mean(bpp)))
  if paths:
    coded = os.path.join(workdir, "cli.dpc")
    row["cli_compress_s"] = _cli_seconds(
        ["compress", "-m", model_dir, paths[0], "-o", coded, "--force"])
    row["cli_decompress_s"] = _cli_seconds(
        ["decompress", "-m", model_dir, coded, "-o",
         os.path.join(workdir, "cli.png"), "--force"])
  return row


def run(out_dir="bench/results", models=None, image_paths=None, limit=None):
  import dpc_tf
  paths = image_paths if image_paths is not None else common.default_images()
  named = common.load_images(paths, limit)
  with tempfile.TemporaryDirectory() as workdir:
    if not paths:  # The CLI timing needs files.
      paths = []
      for name, image in named[:1]:
        p = os.path.join(workdir, f"{name}.png")
        dpc_tf.write_image(p, image)
        paths.append(p)
    if not models:
      models = []
      for arch in DEFAULT_ARCHS:
        path = os.path.join(workdir, arch)
        dpc_tf.save_model(dpc_tf.create_model(arch), path)
        models.append(path)
      models.append("zoo:" + dpc_tf.zoo.DEFAULT)  # What `dpc compress` uses.
    rows = []
    for model_dir in models:
      print(f"benchmarking {model_dir} on {len(named)} images ...", flush=True)
      rows.append(bench_model(model_dir, named, paths, workdir))
  for row in rows:
    if row["model"].startswith(tempfile.gettempdir()):
      row["model"] = f"untrained {row['architecture']} (default size)"
  table = common.markdown_table(
      ["model", "encode ms", "decode ms", "encode MP/s", "decode MP/s", "bpp",
       "load s", "`dpc compress` s", "`dpc decompress` s"],
      [[r["model"], f"{r['encode_ms']:.0f}", f"{r['decode_ms']:.0f}",
        f"{r['encode_mpx_s']:.2f}", f"{r['decode_mpx_s']:.2f}", f"{r['bpp']:.3f}",
        f"{r['load_s']:.2f}", f"{r.get('cli_compress_s', float('nan')):.2f}",
        f"{r.get('cli_decompress_s', float('nan')):.2f}"] for r in rows])
  images_note = (f"{len(named)} images ({', '.join(n for n, _ in named[:3])}, ...)")
  return common.write(out_dir, "codec", dict(images=images_note, rows=rows),
                      f"## Codec speed\n\n{images_note}\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="*", help="model directories (default: "
                      "untrained default-size models of every architecture)")
  parser.add_argument("--images", help="glob of images (default: Kodak beside the "
                      "checkout, else scikit-image photos)")
  parser.add_argument("--limit", type=int, help="use only the first N images")
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  paths = sorted(glob.glob(args.images)) if args.images else None
  if args.images and not paths:
    parser.error(f"no images match {args.images!r}")
  run(args.out, args.models, paths, args.limit)


if __name__ == "__main__":
  main()
