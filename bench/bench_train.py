"""Training speed per distortion: seconds per step and images per second.

    python -m bench.bench_train                      # hyperprior, 64 filters, batch 8, 128 px
    python -m bench.bench_train --steps 20 --distortions mse dpc

Times `fit`'s own train step (`model.make_train_function()`, the function
`fit` runs each step: forward pass, loss, gradients, Adam update) on one
device, for each distortion at one configuration, and reports each as a ratio
to the MSE step. The batches come from memory (random crops of photos
scikit-image ships), so the numbers are the model's and loss's cost, not the
input pipeline's. LPIPS runs with the weights in $DPC_LPIPS_WEIGHTS if set,
else with seeded random weights of the same network (same cost, meaningless
values); the table says which.

The distortions are timed in rounds, one step of each per round, after
warm-up steps of each: on a shared machine the load drifts during a run, and
timing one distortion after another gave the drift to some (once making DPC,
which is LPIPS plus MS-SSIM, faster than MS-SSIM alone). Interleaved, every
distortion sees the same drift, and the median of 20 steps each orders them
the same way from run to run.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from bench import common

DISTORTIONS = ("mse", "msssim", "lpips", "dpc")


def _crops(patch_size, count, seed=0):
  """Random patch_size crops of scikit-image photos, float32 in [0, 1]."""
  rng = np.random.default_rng(seed)
  photos = [image[..., :3] for _, image in common.load_images(None)]
  crops = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top = rng.integers(0, photo.shape[0] - patch_size + 1)
    left = rng.integers(0, photo.shape[1] - patch_size + 1)
    crops.append(photo[top:top + patch_size, left:left + patch_size])
  return np.stack(crops).astype(np.float32) / 255.0


def _lpips_weights(trunk, workdir):
  """(weights path, description): the user's LPIPS weights, else seeded ones."""
  from perceptual import lpips_weights, testing
  try:
    return lpips_weights.resolve_weights_path(trunk, None), "ImageNet weights"
  except (FileNotFoundError, ValueError):
    path = os.path.join(workdir, lpips_weights.default_filename(trunk))
    testing.write_seeded_weights_file(path, trunk, seed=0)
    return path, "seeded random weights (same network and cost)"


def train_step(distortion, crops, arch, hparams, batch_size):
  """step() -> loss: one of `fit`'s train steps of a fresh seeded model."""
  import tensorflow as tf
  import dpc_tf
  tf.keras.utils.set_random_seed(0)
  model = dpc_tf.create_model(arch, **hparams)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), distortion=distortion,
                lmbda=None)
  dataset = (tf.data.Dataset.from_tensor_slices(crops).shuffle(len(crops), seed=0)
             .repeat().batch(batch_size, drop_remainder=True).prefetch(2))
  iterator = iter(dataset)
  function = model.make_train_function()
  # float() waits for the step to finish.
  return lambda: float(function(iterator)["loss"])


def time_steps(steps_by_name, steps, warmup):
  """{name: seconds of each of `steps` steps}, timed in interleaved rounds."""
  for name, step in steps_by_name.items():
    for _ in range(warmup):  # Traces the step function, warms up the kernels.
      step()
  seconds = {name: [] for name in steps_by_name}
  for _ in range(steps):
    for name, step in steps_by_name.items():
      start = time.perf_counter()
      loss = step()
      seconds[name].append(time.perf_counter() - start)
      if not np.isfinite(loss):
        raise RuntimeError(f"The {name} loss is not finite: {loss}.")
  return seconds


def run(out_dir="bench/results", distortions=DISTORTIONS, arch="hyperprior",
        num_filters=64, batch_size=8, patch_size=128, steps=20, warmup=5,
        trunk="alex"):
  """Times the train step per distortion; writes train.json and train.md."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from dpc_tf import training
  crops = _crops(patch_size, 8 * batch_size)
  hparams = dict(num_filters=num_filters)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    weights, weights_note = None, None
    if {"lpips", "dpc"} & set(distortions):
      weights, weights_note = _lpips_weights(trunk, workdir)
    steps_by_name = {
        name: train_step(training.make_distortion(name, trunk=trunk,
                                                  weights_path=weights),
                         crops, arch, hparams, batch_size)
        for name in distortions}
    print(f"timing {', '.join(distortions)}: {warmup} warm-up and {steps} timed "
          "steps each, interleaved ...", flush=True)
    timings = time_steps(steps_by_name, steps, warmup)
    for name in distortions:
      seconds = timings[name]
      step = float(np.median(seconds))
      rows.append(dict(distortion=name, s_per_step=step,
                       s_per_step_mean=float(np.mean(seconds)),
                       s_per_step_quartiles=[float(q) for q in
                                             np.percentile(seconds, [25, 75])],
                       images_per_s=batch_size / step, steps=steps))
  base = next((r["s_per_step"] for r in rows if r["distortion"] == "mse"), None)
  for row in rows:
    row["ratio_to_mse"] = row["s_per_step"] / base if base else None
  config = dict(arch=arch, num_filters=num_filters, batch_size=batch_size,
                patch_size=patch_size, steps=steps, warmup=warmup,
                lpips_trunk=trunk, lpips_weights=weights_note, optimizer="Adam",
                device="one device (tf.distribute default strategy)")
  table = common.markdown_table(
      ["distortion", "s/step (median)", "quartiles", "images/s", "× MSE step"],
      [[r["distortion"], f"{r['s_per_step']:.3f}",
        "{:.3f}–{:.3f}".format(*r["s_per_step_quartiles"]), f"{r['images_per_s']:.1f}",
        "" if r["ratio_to_mse"] is None else f"{r['ratio_to_mse']:.2f}"]
       for r in rows])
  note = (f"{arch}, num_filters={num_filters}, batch {batch_size} of "
          f"{patch_size}x{patch_size} crops, Adam, median of {steps} steps after "
          f"{warmup} warm-up steps, distortions interleaved step by step")
  if weights_note:
    note += f"; LPIPS-{trunk} with {weights_note}"
  return common.write(out_dir, "train", dict(config=config, rows=rows),
                      f"## Training step time per distortion\n\n{note}.\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--distortions", nargs="*", default=list(DISTORTIONS),
                      choices=DISTORTIONS)
  parser.add_argument("--arch", default="hyperprior")
  parser.add_argument("--num_filters", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--patch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--trunk", default="alex", choices=("alex", "vgg", "squeeze"))
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  run(args.out, args.distortions, args.arch, args.num_filters, args.batch_size,
      args.patch_size, args.steps, args.warmup, args.trunk)


if __name__ == "__main__":
  main()
