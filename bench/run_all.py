"""Runs every benchmark and writes bench/results/*.json, *.md and summary.md.

    python -m bench.run_all            # what `make bench` runs
    python -m bench.run_all --only codec lpips

Images: Kodak beside the checkout (../shared/data/kodak) when present, else
photos scikit-image ships. A benchmark that fails is reported by name and the
exit code is 1; the others still run.

Each benchmark runs in a process of its own, one after another: in one shared
process, the graphs, thread pools and memory of one benchmark slowed the next
(the eval benchmark measured MS-SSIM at ~1.3 s per Kodak image after the
others, ~0.1 s alone).
"""

import argparse
import os
import subprocess
import sys
import time
import traceback

from bench import common

OUT = os.path.join("bench", "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _decode_memory(out):
  from bench import bench_decode_memory
  return bench_decode_memory.run(out)


def _vs_tfc(out):
  from bench import bench_vs_tfc
  return bench_vs_tfc.run(out, limit=4)


def _metrics(out):
  from bench import bench_metrics
  return bench_metrics.run(out)


def _startup(out):
  from bench import bench_startup
  return bench_startup.run(out)


def _fuzz(out):
  from bench import fuzz_decoder
  return fuzz_decoder.run(out)


BENCHMARKS = {"codec": _codec, "lpips": _lpips, "train": _train, "eval": _eval,
              "decode_memory": _decode_memory, "fuzz": _fuzz, "vs_tfc": _vs_tfc,
              "precision": _precision, "metrics": _metrics, "startup": _startup}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
  parser.add_argument("--out", default=OUT)
  parser.add_argument("--in-this-process", metavar="NAME", choices=sorted(BENCHMARKS),
                      help=argparse.SUPPRESS)  # What each child process runs.
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.in_this_process:
    try:
      BENCHMARKS[args.in_this_process](args.out)
    except Exception:
      traceback.print_exc()
      return 1
    return 0
  failed = []
  for name in args.only or BENCHMARKS:
    print(f"=== {name}", flush=True)
    start = time.time()
    code = subprocess.call([sys.executable, "-m", "bench.run_all",
                            "--out", os.path.abspath(args.out), "--in-this-process", name],
                           cwd=REPO)
    if code:
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
