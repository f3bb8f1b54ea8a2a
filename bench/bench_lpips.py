"""LPIPS forward+backward time on CPU: ours (Keras) and the PyTorch reference.

    python -m bench.bench_lpips [--trunks alex squeeze vgg] [--batch 8]
        [--size 256] [--repeats 5] [--out bench/results]

One step is what training a codec does with LPIPS: distances of a batch
(default 8 images of 256x256) and the gradient with respect to the
reconstructions. Both sides run in this process, one after the other, with
the same seeded trunk weights and the reference's lin weights, so the run
also reports how far apart their distances are at this size. Times are the
median of `--repeats` steps after one warm-up step (graph tracing for ours);
the two implementations' steps alternate, so that load from other processes
on a shared machine affects both alike.
Without torch/lpips installed, only ours is timed, and the report says so.

Writes lpips.json and a Markdown table, lpips.md, to --out (default
bench/results), with the machine's description (bench/common.py). For
bench/run_all.py: `run(out_dir)` does the same and returns the report.
"""

import argparse
import os
import tempfile

import numpy as np

from bench import common


def _reference_available():
  try:
    import lpips  # pylint: disable=import-outside-toplevel,unused-import
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except Exception as error:  # pylint: disable=broad-except
    return False, f"{type(error).__name__}: {error}"
  return True, None


def _ours(trunk, weights_path, x0, x1):
  """(step, distances) of our LPIPS: the step returns the gradient."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from perceptual.lpips import LPIPS  # pylint: disable=import-outside-toplevel
  metric = LPIPS(trunk, weights_path=weights_path)
  x0 = tf.constant(x0)
  x1 = tf.constant(x1)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(x1)
      distance = metric(x0, x1)
      total = tf.reduce_sum(distance)
    return distance, tape.gradient(total, x1)

  return (lambda: step()[1].numpy()), step()[0].numpy()


def _reference(trunk, x0, x1):
  """(step, distances) of the reference with the same seeded weights."""
  import torch  # pylint: disable=import-outside-toplevel
  from perceptual import testing  # pylint: disable=import-outside-toplevel
  model = testing.reference_lpips(trunk)
  t0 = torch.from_numpy(np.ascontiguousarray(x0.transpose(0, 3, 1, 2)))
  t1 = torch.from_numpy(np.ascontiguousarray(x1.transpose(0, 3, 1, 2)))

  def step():
    reconstruction = t1.clone().requires_grad_(True)
    distance = model(t0, reconstruction, normalize=True)
    distance.sum().backward()
    return distance.detach().numpy().reshape(-1)

  return step, step()


def run(out_dir="bench/results", trunks=("alex",), batch=8, size=256,
        repeats=5, seed=0):
  """Times both implementations; writes out_dir/lpips.json and .md.

  Returns the report (a dict), as written to the JSON file.
  """
  from perceptual import testing  # pylint: disable=import-outside-toplevel
  reference_ok, reference_error = _reference_available()
  rng = np.random.default_rng(seed)
  x0 = rng.random((batch, size, size, 3), dtype=np.float32)
  x1 = np.clip(x0 + rng.normal(0, 0.1, x0.shape), 0, 1).astype(np.float32)
  results = {}
  with tempfile.TemporaryDirectory() as directory:
    for trunk in trunks:
      lins = testing.reference_lin_state_dict(trunk) if reference_ok else None
      weights_path = os.path.join(directory, f"{trunk}.npz")
      testing.write_seeded_weights_file(weights_path, trunk,
                                        lin_state_dict=lins)
      ours_step, ours_distance = _ours(trunk, weights_path, x0, x1)
      if not reference_ok:
        results[trunk] = {
            "ours_seconds": common.time_interleaved([ours_step], repeats)[0]}
        continue
      reference_step, reference_distance = _reference(trunk, x0, x1)
      ours_seconds, reference_seconds = common.time_interleaved(
          [ours_step, reference_step], repeats)
      results[trunk] = {
          "ours_seconds": ours_seconds,
          "reference_seconds": reference_seconds,
          "ratio_ours_to_reference": ours_seconds / reference_seconds,
          "max_abs_distance_difference": float(
              np.abs(ours_distance - reference_distance).max()),
      }
  report = {
      "benchmark": "LPIPS forward+backward (gradient w.r.t. x1), CPU",
      "batch": batch, "height": size, "width": size, "repeats": repeats,
      "statistic": "median seconds per step after one warm-up step" + (
          ", steps of both implementations alternating" if reference_ok
          else ""),
      "reference_available": reference_ok,
      "note": (None if reference_ok else
               "PyTorch reference not installed (" + reference_error +
               "): only ours was timed; `make test-reference` installs it."),
      "versions": _versions(reference_ok),
      "results": results,
  }
  return common.write(out_dir, "lpips", report, markdown(report))


def _versions(reference_ok):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  versions = {"tensorflow": tf.__version__, "numpy": np.__version__,
              "tensorflow_intra_op_threads":
                  tf.config.threading.get_intra_op_parallelism_threads()}
  if reference_ok:
    import torch  # pylint: disable=import-outside-toplevel
    versions["torch"] = torch.__version__
    versions["torch_threads"] = torch.get_num_threads()
  return versions


def markdown(report):
  """The report as a Markdown section with a table."""
  header = ["trunk", "ours (s)", "reference (s)", "ours / reference",
            "max abs distance difference"]
  rows = []
  for trunk, entry in report["results"].items():
    if report["reference_available"]:
      rows.append([trunk, f"{entry['ours_seconds']:.3f}",
                   f"{entry['reference_seconds']:.3f}",
                   f"{entry['ratio_ours_to_reference']:.2f}",
                   f"{entry['max_abs_distance_difference']:.1e}"])
    else:
      rows.append([trunk, f"{entry['ours_seconds']:.3f}", "n/a", "n/a", "n/a"])
  text = (f"## LPIPS forward+backward, batch {report['batch']} x "
          f"{report['height']}x{report['width']}, CPU\n\n"
          f"{report['statistic']}.\n\n" + common.markdown_table(header, rows))
  if report["note"]:
    text += "\n\n" + report["note"]
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trunks", nargs="+", default=["alex"],
                      choices=["alex", "vgg", "squeeze"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="bench/results",
                      help="directory for lpips.json and lpips.md")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  run(args.out, tuple(args.trunks), args.batch, args.size, args.repeats)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
