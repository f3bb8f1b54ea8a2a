"""The main job on an embedded default: compress real photos with the zoo's `dpc` model.

    python -m dpc_tf.demo --workdir demo_out            (what `make demo` runs)
    python -m dpc_tf.demo --train --workdir demo_train  (`make demo-train`)

The main job codes photos that scikit-image ships (held out from training)
with the shipped variable-rate `dpc` model, as a user would from the shell:
`dpc compress --bpp` (rate control) and `dpc decompress` through real files,
then codes each with JPEG 4:2:0 at the same rate and prints bpp, PSNR,
MS-SSIM and LPIPS side by side.

`--train` runs the project's programs end to end instead: `dpc-train` fits a
small hyperprior codec for a short while on photos scikit-image ships,
`dpc-export` writes it as SavedModels for TF Serving, and `dpc compress` /
`dpc decompress` code a held-out photo with the exported SavedModel.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

# Photos bundled with scikit-image: training set, and the held-out test photo.
TRAIN_PHOTOS = ("coffee", "chelsea", "rocket", "hubble_deep_field",
                "immunohistochemistry", "retina", "colorwheel", "logo")
TEST_PHOTO = "astronaut"
# The main job's photos (none is in the zoo's training data).
ZOO_PHOTOS = ("astronaut", "coffee", "chelsea")


def skimage_photo(name):
  from skimage import data
  image = getattr(data, name)()
  if image.ndim == 2:
    image = np.stack([image] * 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def write_photo(path, name):
  from dpc_tf import images
  if not os.path.exists(path):
    images.write_image(path, skimage_photo(name))
  return path


def run(command):
  print("\n$", " ".join(command), flush=True)
  subprocess.run(command, check=True)


def jpeg_at(image, bpp):
  """(JPEG 4:2:0 bytes, decoded) at its largest setting at or under `bpp`: the
  same search the human study and tools/side_by_side.py use."""
  from dpc_tf.evaluation import codecs as classical
  from dpc_tf.study.codecs import ClassicalStudyCodec
  jpeg = ClassicalStudyCodec(classical.get_codec("jpeg420"))
  coded = jpeg.code({"photo": image}, [bpp])[("photo", bpp)]
  return coded.data, np.asarray(jpeg.decode(coded))


def zoo_demo(args):
  """Codes the photos with the zoo's dpc model at --bpp, and with JPEG."""
  start = time.time()
  photos = os.path.join(args.workdir, "photos")
  coded = os.path.join(args.workdir, "coded")
  decoded = os.path.join(args.workdir, "decoded")
  os.makedirs(photos, exist_ok=True)
  paths = [write_photo(os.path.join(photos, f"{name}.png"), name)
           for name in ZOO_PHOTOS]
  dpc = [sys.executable, "-m", "dpc_tf.cli"]
  run(dpc + ["compress", *paths, "--bpp", str(args.bpp), "--out-dir", coded,
             "--force"])
  run(dpc + ["decompress", *[os.path.join(coded, f"{n}.dpc") for n in ZOO_PHOTOS],
             "--out-dir", decoded, "--force"])

  import perceptual
  from dpc_tf import images, metrics
  lpips = perceptual.LPIPS("alex")

  def measure(original, result, num_bytes):
    x, y = metrics.unit_batch(original), metrics.unit_batch(result)
    ms, ms_db = metrics.msssim_and_db(original, result)
    return (f"{metrics.bpp(num_bytes, original):.3f} bpp, PSNR "
            f"{metrics.psnr(original, result):5.2f} dB, MS-SSIM {ms:.4f} "
            f"({ms_db:5.2f} dB), LPIPS {float(lpips.measure(x, y)[0]):.3f}")

  print(f"\nPhotos held out from training, coded at about {args.bpp} bpp "
        "(LPIPS: lower is better):")
  for name in ZOO_PHOTOS:
    original = images.read_image(os.path.join(photos, f"{name}.png"))
    stream = os.path.join(coded, f"{name}.dpc")
    result = images.read_image(os.path.join(decoded, f"{name}.decoded.png"))
    jpeg, jpeg_decoded = jpeg_at(original, os.path.getsize(stream) * 8 / original[..., 0].size)
    print(f"  {name} ({original.shape[1]}x{original.shape[0]})")
    print(f"    dpc (zoo):  {measure(original, result, os.path.getsize(stream))}")
    print(f"    JPEG 4:2:0: {measure(original, jpeg_decoded, len(jpeg))}")
  print(f"Bitstreams in {coded}, decoded PNGs in {decoded}. Done in "
        f"{time.time() - start:.0f} s.")
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="demo_out")
  parser.add_argument("--bpp", type=float, default=0.3,
                      help="the main job's target bits per pixel")
  parser.add_argument("--train", action="store_true",
                      help="the training demo: dpc-train, dpc-export, dpc")
  parser.add_argument("--steps", type=int, default=300, help="--train: steps")
  parser.add_argument("--lmbda", type=float, default=0.004,
                      help="--train: λ of the MSE loss (bpp + λ·255²·MSE)")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not args.train:
    return zoo_demo(args)
  start = time.time()
  workdir = args.workdir
  photos = os.path.join(workdir, "photos")
  os.makedirs(photos, exist_ok=True)
  for name in TRAIN_PHOTOS:
    write_photo(os.path.join(photos, f"{name}.png"), name)
  test_png = write_photo(os.path.join(workdir, f"{TEST_PHOTO}.png"), TEST_PHOTO)
  run_dir = os.path.join(workdir, "run")
  serving = os.path.join(workdir, "serving")
  exported = os.path.join(serving, "demo")

  # The installed programs of train/, export/ and the dpc command.
  python = sys.executable
  epochs = 4
  run([python, "-m", "dpc_train", f"--train_glob={photos}",
       f"--val_glob={test_png}", f"--output_dir={run_dir}", "--overwrite",
       "--arch=hyperprior", "--num_filters=64", "--distortion=mse",
       f"--lmbda={args.lmbda}", "--patch_size=128", "--batch_size=8",
       f"--epochs={epochs}", f"--steps_per_epoch={max(1, args.steps // epochs)}",
       "--learning_rate=1e-3", "--checkpoint_every=0", "--seed=0", "--verbose=2"])
  run([python, "-m", "dpc_export", f"--model_dir={run_dir}",
       f"--export_dir={serving}", "--name=demo", "--version=1", "--overwrite"])

  coded = os.path.join(workdir, f"{TEST_PHOTO}.dpc")
  decoded = os.path.join(workdir, f"{TEST_PHOTO}.decoded.png")
  dpc = [python, "-m", "dpc_tf.cli"]
  run(dpc + ["compress", "-m", exported, test_png, "-o", coded, "--force"])
  run(dpc + ["decompress", "-m", exported, coded, "-o", decoded, "--force"])

  from dpc_tf import images, metrics
  original = images.read_image(test_png)
  result = images.read_image(decoded)
  gray = np.full_like(original, int(original.mean()))
  bpp = metrics.bpp(os.path.getsize(coded), original)
  ms, ms_db = metrics.msssim_and_db(original, result)
  print(f"\n{TEST_PHOTO} ({original.shape[1]}x{original.shape[0]}), held out "
        "from training, coded with the exported SavedModel:")
  print(f"  dpc hyperprior: {bpp:.3f} bpp (of 24 uncompressed), "
        f"PSNR {metrics.psnr(original, result):.2f} dB, MS-SSIM {ms:.4f} "
        f"({ms_db:.2f} dB), LPIPS {metrics.lpips(original, result):.4f}")
  print(f"  flat gray image: PSNR {metrics.psnr(original, gray):.2f} dB, "
        f"MS-SSIM {metrics.msssim(original, gray):.4f}, "
        f"LPIPS {metrics.lpips(original, gray):.4f}")
  print(f"Trained model: {run_dir}/model (TensorBoard: {run_dir}/logs); "
        f"SavedModels: {serving}/demo/1 and {serving}/demo_core/1.")
  print(f"Done in {time.time() - start:.0f} s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
