"""Where a fresh `dpc compress` / `dpc decompress` spends its time.

    python -m bench.bench_startup [--model zoo:dpc] [--image kodak/kodim04.png] [--rounds 3]

Each round starts a fresh Python process per variant and times, in it:
importing TensorFlow and dpc_tf, loading the model, the first encode (which
traces the graph), a second encode, the first decode (traced) and a second
decode. Variants: the model's compression graphs traced as they ship
(without AutoGraph, `CompressionModel.autograph = False`) and with AutoGraph
(`autograph = True`: the conversion they paid before; the GDN is
`layers.GDN` in both, so neither graph has a run-time branch). Variants alternate within
each round, in reversed order every other round; medians over rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench import common

# Runs in the fresh process: prints one JSON line of seconds.
_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import tensorflow as tf
import dpc_tf
from dpc_tf import images
seconds = {"import": time.perf_counter() - start}
model, image_path, autograph = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
start = time.perf_counter()
codec = dpc_tf.load_codec(model)
codec.model.autograph = autograph
seconds["load"] = time.perf_counter() - start
image = images.read_image(image_path)
quality = codec.model.default_quality
for name in ("first_encode", "second_encode"):
  start = time.perf_counter()
  data = codec.encode(image, quality=quality)
  seconds[name] = time.perf_counter() - start
for name in ("first_decode", "second_decode"):
  start = time.perf_counter()
  codec.decode(data)
  seconds[name] = time.perf_counter() - start
print(json.dumps(seconds))
"""

PARTS = ("import", "load", "first_encode", "second_encode", "first_decode",
         "second_decode")
VARIANTS = {"without AutoGraph (shipped)": "0", "with AutoGraph": "1"}


def _child_seconds(model, image_path, autograph):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", _CHILD, model, image_path, autograph],
                        env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"the timing process failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(out_dir="bench/results", model="zoo:dpc", image_path=None, rounds=3):
  image_path = image_path or (common.default_images() or [None])[0]
  if image_path is None:
    raise SystemExit("No image: pass --image (Kodak is not beside the checkout).")
  samples = {variant: [] for variant in VARIANTS}
  names = list(VARIANTS)
  for round_index in range(rounds):
    for variant in (names if round_index % 2 == 0 else names[::-1]):
      samples[variant].append(_child_seconds(model, image_path, VARIANTS[variant]))
      print(f"round {round_index + 1}/{rounds}, {variant}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in samples[variant][-1].items()),
            flush=True)
  medians = {variant: {part: statistics.median(s[part] for s in runs)
                       for part in PARTS}
             for variant, runs in samples.items()}
  result = dict(model=model, image=os.path.basename(image_path), rounds=rounds,
                load_average=os.getloadavg()[0], median_seconds=medians,
                samples=samples)
  rows = [[part.replace("_", " ")] + [f"{medians[v][part]:.2f}" for v in VARIANTS]
          for part in PARTS]
  first, second = names
  ratio = (medians[first]["first_encode"] + medians[first]["first_decode"]) / (
      medians[second]["first_encode"] + medians[second]["first_decode"])
  table = (f"## Start-up of a fresh process: {model} on {result['image']}\n\n"
           f"Seconds, medians of {rounds} rounds of fresh processes, variants "
           f"alternating; load average {result['load_average']:.1f} on "
           f"{os.cpu_count()} cores at the end (compare columns, not absolute "
           "times, on a busy machine).\n\n"
           + common.markdown_table(["part"] + names, rows)
           + f"\n\nFirst encode + first decode (tracing included), {first} / "
           f"{second}: **{ratio:.2f}×**.")
  return common.write(out_dir, "startup", result, table)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="zoo:dpc")
  parser.add_argument("--image", default=None, help="default: the first Kodak image")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  run(args.out, args.model, args.image, args.rounds)


if __name__ == "__main__":
  main()
