"""Runs every benchmark and writes bench/results/*.json, *.md and summary.md.

    python -m bench.run_all            # what `make bench` runs
    python -m bench.run_all --only codec lpips

Images: Kodak beside the checkout (../shared/data/kodak) when present, else
photos scikit-image ships. A benchmark that fails is reported by name and the
exit code is 1; the others still run.
"""

import argparse
import os
import sys
import time
import traceback

from bench import common

OUT = os.path.join("bench", "results")


def _codec(out):
  from bench import bench_codec
  return bench_codec.run(out, limit=8)


def _lpips(out):
  from bench import bench_lpips
  return bench_lpips.run(out, trunks=("alex", "squeeze", "vgg"))


def _train(out):
  from bench import bench_train
  return bench_train.run(out)


def _eval(out):
  from bench import bench_eval
  return bench_eval.run(out)


def _precision(out):
  from bench import bench_precision
  return bench_precision.run(out)


BENCHMARKS = {"codec": _codec, "lpips": _lpips, "train": _train, "eval": _eval,
              "precision": _precision}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  failed = []
  for name in args.only or BENCHMARKS:
    print(f"=== {name}", flush=True)
    start = time.time()
    try:
      BENCHMARKS[name](args.out)
    except Exception:
      traceback.print_exc()
      failed.append(name)
    print(f"=== {name}: {time.time() - start:.0f} s", flush=True)
  parts = [f"# Benchmarks\n\nMachine: {common.machine()}\n"]
  for name in sorted(os.listdir(args.out)):
    if name.endswith(".md") and name != "summary.md":
      with open(os.path.join(args.out, name)) as f:
        parts.append(f.read())
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write("\n\n".join(parts))
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
