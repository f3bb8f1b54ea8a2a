"""Shared by the benchmarks: default images, machine description, JSON + table output."""

import glob
import json
import os
import platform
import statistics
import time

import numpy as np

KODAK = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kodak", "*.png")


def default_images():
  """Kodak if it is beside the checkout, else photos scikit-image ships."""
  paths = sorted(glob.glob(KODAK))
  return paths


def load_images(paths, limit=None):
  """[(name, uint8 image)] for paths, or scikit-image photos if none given."""
  from dpc_tf import images
  if paths:
    return [(os.path.basename(p), images.read_image(p)) for p in paths[:limit]]
  from skimage import data
  return [(n, np.ascontiguousarray(getattr(data, n)()))
          for n in ("astronaut", "coffee", "chelsea", "rocket")][:limit]


def machine():
  import multiprocessing
  return dict(platform=platform.platform(), processor=platform.processor(),
              cpus=multiprocessing.cpu_count(), python=platform.python_version(),
              date=time.strftime("%Y-%m-%d"))


def write(out_dir, name, result, table):
  """Writes name.json (result + machine) and name.md (the table); prints the table."""
  os.makedirs(out_dir, exist_ok=True)
  result = dict(result, machine=machine())
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  text = table + f"\n\nMachine: {result['machine']}\n"
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(text)
  print(text)
  return result


def markdown_table(header, rows):
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def time_interleaved(sides, rounds, items=(None,)):
  """Median over `rounds` of each side's seconds per item.

  Every side first runs once over the items (tracing, thread pools,
  allocation). Sides then take turns within each round, in reversed order
  every other round, so that a change of load on a shared machine hits all
  of them alike. `items=(None,)` calls each side without an argument.
  """
  def run(side):
    for item in items:
      side() if item is None else side(item)
  for side in sides:
    run(side)
  totals = [[] for _ in sides]
  for round_index in range(rounds):
    order = list(range(len(sides)))
    if round_index % 2:
      order.reverse()
    for k in order:
      start = time.perf_counter()
      run(sides[k])
      totals[k].append(time.perf_counter() - start)
  return [statistics.median(t) / len(items) for t in totals]
