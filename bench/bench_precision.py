"""Training precision: float32 against mixed_bfloat16, speed and rate-distortion.

    python -m bench.bench_precision                    # both parts (what run_all runs)
    python -m bench.bench_precision --part speed --rounds 6
    python -m bench.bench_precision --part rd --rd_steps 600
    python -m bench.bench_precision --part inference

inference: should coding offer bfloat16 analysis/synthesis? The zoo's `mse`
  model at its default quality codes Kodak images with each transform in
  float32 or bfloat16 (the hyper-transforms and entropy models stay float32,
  so a bfloat16 encoder's bitstream is decodable by a float32 decoder and the
  reverse): bpp and PSNR of the four encoder/decoder pairs, and the time of
  each transform in each precision, alternated in rounds.

speed: the train step (`model.make_train_function()`, what `fit` runs: forward,
  MSE loss, gradients, Adam) of mean_scale_hyperprior with 128 and with 64
  filters, batch 8 of 128x128 crops, float32 and mixed_bfloat16 built side by
  side and *alternated* in rounds (the order flips each round), so that load
  from other processes hits both alike; the ratio is the median over rounds of
  the two configurations' mean step times in the round.
rd: two short training runs from the same seed on the same batches, one per
  precision (alternating chunks of steps, which also gives a long-run time
  ratio), then each model is frozen, saved, loaded back (float32, as every
  user loads it) and codes real images through `dpc_tf.Codec`: bpp from the
  bytes, PSNR of the decoded pixels. Training crops come from
  ../shared/data/train and the images coded are the first Kodak images (else
  both from the photos scikit-image ships, the coded one held out).

Also records which hardware bfloat16 support the machine has
(`dpc_tf.precision.bfloat16_hardware`) and how many convolution ops of the
step run in bfloat16, proving the mixed step really computes in bfloat16.
"""

import argparse
import glob
import json
import os
import tempfile
import time

import numpy as np

from bench import common

PRECISIONS = ("float32", "mixed_bfloat16")
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _model(arch, num_filters, precision, lmbda=0.01, learning_rate=1e-4, seed=0):
  import tensorflow as tf
  import dpc_tf
  tf.keras.utils.set_random_seed(seed)  # Same initial weights for both.
  model = dpc_tf.create_model(arch, num_filters=num_filters)
  dpc_tf.layers.set_training_precision(model, precision)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                distortion="mse", lmbda=lmbda)
  return model


def _conv_dtypes(model, batch_shape):
  """{dtype: count} of the convolution ops (and their gradients) of a step."""
  from dpc_tf import precision
  counts = {}
  for _, kind, dtype in precision.training_step_ops(model, batch_shape):
    if kind.startswith("Conv2D"):
      counts[dtype] = counts.get(dtype, 0) + 1
  return counts


class _Stepper:
  """One model's compiled train step over an endless stream of batches."""

  def __init__(self, model, batches, shape):
    import tensorflow as tf
    self.model = model
    self.iterator = iter(tf.data.Dataset.from_generator(
        batches, output_signature=tf.TensorSpec(shape, tf.float32)))
    self.step = model.make_train_function()

  def run(self, steps):
    """Runs `steps` steps; returns (seconds, last logs as floats)."""
    start = time.perf_counter()
    for _ in range(steps):
      logs = self.step(self.iterator)
    logs = {k: float(v) for k, v in logs.items()}  # Waits for the last step.
    return time.perf_counter() - start, logs


def _photos(paths, count, min_side, seed):
  from dpc_tf import images
  rng = np.random.default_rng(seed)
  chosen = [paths[i] for i in rng.permutation(len(paths))]
  photos = []
  for path in chosen:
    image = images.read_image(path, alpha="drop")
    if min(image.shape[:2]) >= min_side:
      photos.append(image)
    if len(photos) == count:
      break
  return photos


def _data(data_root, patch_size, val_count, seed=0):
  """(training photos, their description, [(name, image)] to code).

  Trains on data_root/train and codes the first Kodak images; without them,
  trains on all but the last of the photos scikit-image ships and codes the
  last, so that the coded images are never trained on.
  """
  from dpc_tf import images
  paths = sorted(p for p in glob.glob(os.path.join(data_root, "train", "*"))
                 if p.lower().endswith((".png", ".jpg", ".jpeg")))
  kodak = sorted(glob.glob(os.path.join(data_root, "kodak", "*.png")))
  if paths and kodak:
    val = [(os.path.basename(p), images.read_image(p, alpha="drop"))
           for p in kodak[:val_count]]
    return (_photos(paths, 64, patch_size, seed),
            f"64 photos of {data_root}/train", val)
  photos = [(n, image[..., :3]) for n, image in common.load_images(None)]
  return ([image for _, image in photos[:-1]],
          f"scikit-image photos ({', '.join(n for n, _ in photos[:-1])})",
          photos[-1:])


def _batches(photos, batch_size, patch_size, seed):
  """A generator function of random float32 crop batches, the same for a seed."""
  def generate():
    rng = np.random.default_rng(seed)
    while True:
      batch = []
      for _ in range(batch_size):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - patch_size + 1)
        left = rng.integers(photo.shape[1] - patch_size + 1)
        batch.append(photo[top:top + patch_size, left:left + patch_size])
      yield np.stack(batch).astype(np.float32) / 255.0
  return generate


def speed(photos, arch, num_filters, batch_size, patch_size, rounds,
          steps_per_round, warmup, explicit=False):
  """Step times of both precisions, alternated; a row of results.

  explicit: also time both precisions with tfc's EXPLICIT-padding
  convolutions in training (`layers._Stack.pad_in_training = False`, as
  before dpc-tf padded them itself), whose gradients oneDNN does not run.
  """
  from dpc_tf import layers
  configs = [(p, True) for p in PRECISIONS]
  if explicit:
    configs += [(p, False) for p in PRECISIONS]
  shape = [batch_size, patch_size, patch_size, 3]
  steppers, convs = {}, {}
  for p, pad in configs:
    # Read when the step is traced, i.e. at its first run (the warm-up).
    layers._Stack.pad_in_training = pad  # pylint: disable=protected-access
    model = _model(arch, num_filters, p)
    convs[p] = _conv_dtypes(model, shape)
    steppers[(p, pad)] = _Stepper(model, _batches(photos, batch_size,
                                                  patch_size, 0), shape)
    steppers[(p, pad)].run(warmup)  # Traces the step, warms up the kernels.
  layers._Stack.pad_in_training = True  # pylint: disable=protected-access
  # One untimed alternation: the first step after another model ran is slow
  # (seen as a 2-5x slower first round), whichever model it is.
  for c in configs:
    steppers[c].run(warmup)
  means = {c: [] for c in configs}
  for r in range(rounds):
    for c in (configs if r % 2 == 0 else configs[::-1]):
      seconds, logs = steppers[c].run(steps_per_round)
      if not np.isfinite(logs["loss"]):
        raise RuntimeError(f"{c}: the loss is not finite ({logs['loss']}).")
      means[c].append(seconds / steps_per_round)
    print(f"  {num_filters} filters, round {r + 1}/{rounds}: " + ", ".join(
        f"{_label(c)} {means[c][-1]:.3f} s/step" for c in configs), flush=True)
  base = means[("float32", True)]
  return dict(
      num_filters=num_filters,
      s_per_step={_label(c): float(np.median(v)) for c, v in means.items()},
      round_means={_label(c): [round(s, 4) for s in v] for c, v in means.items()},
      # Each round's ratio to the float32 step of the same round.
      ratio_to_float32={_label(c): float(np.median([a / b for a, b in zip(v, base)]))
                        for c, v in means.items()},
      conv_ops_by_dtype=convs)


def _label(config):
  precision, pad = config
  return precision if pad else f"{precision} (EXPLICIT padding)"


def _evaluate(model, images_):
  """Saves, reloads (float32) and codes `images_`: mean bpp and PSNR."""
  import dpc_tf
  from dpc_tf import metrics
  with tempfile.TemporaryDirectory() as workdir:
    dpc_tf.save_model(model, os.path.join(workdir, "model"))
    codec = dpc_tf.load_codec(os.path.join(workdir, "model"))
    bpp, psnr = [], []
    for image in images_:
      data = codec.encode(image)
      bpp.append(metrics.bpp(len(data), image))
      psnr.append(metrics.psnr(image, codec.decode(data)))
  return float(np.mean(bpp)), float(np.mean(psnr))


def rate_distortion(photos, arch, num_filters, batch_size, patch_size, steps,
                    chunk, lmbda, learning_rate, val_images):
  """Trains one model per precision on the same batches; codes val_images."""
  models = {p: _model(arch, num_filters, p, lmbda, learning_rate)
            for p in PRECISIONS}
  steppers = {p: _Stepper(m, _batches(photos, batch_size, patch_size, 1),
                          [batch_size, patch_size, patch_size, 3])
              for p, m in models.items()}
  seconds = {p: 0.0 for p in PRECISIONS}
  logs = {}
  done = 0
  while done < steps:
    n = min(chunk, steps - done)
    for p in (PRECISIONS if (done // chunk) % 2 == 0 else PRECISIONS[::-1]):
      s, logs[p] = steppers[p].run(n)
      seconds[p] += s
    done += n
    print(f"  rd: {done}/{steps} steps: " + ", ".join(
        f"{p} loss {logs[p]['loss']:.4f} psnr {logs[p]['psnr']:.2f}"
        for p in PRECISIONS), flush=True)
  rows = []
  for p, model in models.items():
    model.update()
    bpp, psnr = _evaluate(model, val_images)
    rows.append(dict(precision=p, bpp=bpp, psnr=psnr,
                     train_s_per_step=seconds[p] / steps,
                     final_train_loss=logs[p]["loss"],
                     final_train_psnr=logs[p]["psnr"]))
    print(f"  rd: {p}: {bpp:.4f} bpp, {psnr:.2f} dB", flush=True)
  return rows


def _speed_section(result):
  c, sp = result["config"], result["speed"]
  rows = sp["rows"]
  labels = list(rows[0]["s_per_step"])
  table = common.markdown_table(
      ["num_filters", "training precision", "s/step (median)",
       "× float32 (median of rounds)"],
      [[r["num_filters"], label, f"{r['s_per_step'][label]:.3f}",
        f"{r['ratio_to_float32'][label]:.2f}"]
       for r in rows for label in labels])
  bf16 = rows[0]["conv_ops_by_dtype"]["mixed_bfloat16"]
  return (f"### Speed\n\n{c['arch']}, batch {c['batch_size']} of "
          f"{c['patch_size']}x{c['patch_size']} crops, MSE, Adam; "
          f"{sp['rounds']} rounds of {sp['steps_per_round']} steps per "
          f"configuration, alternated, after {sp['warmup']} warm-up steps and "
          f"an untimed round. In the mixed step {bf16.get('bfloat16', 0)} of "
          f"{sum(bf16.values())} convolution ops (forward and gradients) are "
          f"bfloat16.\n\n{table}")


def inference(images_, model_name="mse", rounds=3):
  """bf16 vs float32 analysis/synthesis when coding: RD and speed (see docstring)."""
  import tensorflow as tf
  import dpc_tf
  from dpc_tf import metrics
  model = dpc_tf.zoo.load_model(model_name)
  quality = model.default_quality  # None for a fixed-rate model.
  quality_inputs = model._quality_inputs(quality)  # pylint: disable=protected-access

  def transform(stack, precision):
    def run(x):
      # The precision applies to training calls (layers._Stack.call), and a
      # training call of a transform computes the inference function.
      stack.precision = precision
      try:
        return stack(x, training=precision != "float32")
      finally:
        stack.precision = "float32"
    spec = tf.TensorSpec([1, None, None, None], tf.float32)
    return tf.function(run, input_signature=[spec])

  analysis = {p: transform(model.analysis_transform, p) for p in PRECISIONS}
  synthesis = {p: transform(model.synthesis_transform, p) for p in PRECISIONS}
  inputs = [model._pad(tf.constant(image)) for _, image in images_]  # pylint: disable=protected-access
  coded = {}
  for (_, image), x in zip(images_, inputs):
    shape = tf.constant(image.shape[:2], tf.int32)
    for encoder in PRECISIONS:
      outputs = model.compress_analyzed(analysis[encoder](x), shape, quality)
      strings = [outputs[n] for n in model.string_names]
      bits = 8 * sum(len(s.numpy()) for s in strings)
      latents = model._traced("decode_latents")(  # pylint: disable=protected-access
          shape, *strings, *quality_inputs)
      for decoder in PRECISIONS:
        decoded = model._to_image(synthesis[decoder](latents), shape)  # pylint: disable=protected-access
        coded.setdefault((encoder, decoder), []).append(
            (bits / (image.shape[0] * image.shape[1]), metrics.psnr(image, decoded.numpy())))
  rows = []
  for (encoder, decoder), values in coded.items():
    rows.append(dict(encoder=encoder, decoder=decoder,
                     bpp=float(np.mean([v[0] for v in values])),
                     psnr=float(np.mean([v[1] for v in values]))))
  latents = [analysis["float32"](x) for x in inputs]
  times = {(part, p): [] for part in ("analysis", "synthesis") for p in PRECISIONS}
  for r in range(rounds + 1):  # The first round warms up (tracing).
    order = PRECISIONS if r % 2 else PRECISIONS[::-1]
    for p in order:
      for part, function, arguments in (("analysis", analysis[p], inputs),
                                        ("synthesis", synthesis[p], latents)):
        start = time.perf_counter()
        for argument in arguments:
          function(argument).numpy()
        if r:
          times[(part, p)].append((time.perf_counter() - start) / len(arguments))
  speed_rows = [dict(transform=part, float32_s=float(np.median(times[(part, "float32")])),
                     bfloat16_s=float(np.median(times[(part, "mixed_bfloat16")])))
                for part in ("analysis", "synthesis")]
  for row in speed_rows:
    row["ratio"] = row["bfloat16_s"] / row["float32_s"]
  return dict(model=model_name, quality=quality, images=[n for n, _ in images_],
              rounds=rounds, rows=rows, speed=speed_rows,
              load_average=os.getloadavg()[0])


def _inference_section(result):
  inf = result["inference"]
  base = next(r for r in inf["rows"] if r["encoder"] == r["decoder"] == "float32")
  table = common.markdown_table(
      ["encoder transforms", "decoder transforms", "bpp", "PSNR dB", "Δ PSNR dB"],
      [[r["encoder"], r["decoder"], f"{r['bpp']:.4f}", f"{r['psnr']:.3f}",
        f"{r['psnr'] - base['psnr']:+.3f}"] for r in inf["rows"]])
  speed_table = common.markdown_table(
      ["transform", "float32 s/image", "bfloat16 s/image", "bfloat16 / float32"],
      [[r["transform"], f"{r['float32_s']:.3f}", f"{r['bfloat16_s']:.3f}",
        f"{r['ratio']:.2f}"] for r in inf["speed"]])
  return (f"### Coding with bfloat16 analysis/synthesis\n\nZoo model "
          f"`{inf['model']}` at quality {inf['quality']}, {len(inf['images'])} images "
          f"({', '.join(inf['images'])}); hyper-transforms and entropy models float32 "
          f"(every pair decodes). Medians of {inf['rounds']} alternated rounds, load "
          f"average {inf['load_average']:.1f}.\n\n{table}\n\n{speed_table}")


def _rd_section(result):
  c, rd = result["config"], result["rd"]
  table = common.markdown_table(
      ["precision", "bpp", "PSNR dB", "train s/step", "final train loss"],
      [[r["precision"], f"{r['bpp']:.4f}", f"{r['psnr']:.2f}",
        f"{r['train_s_per_step']:.3f}", f"{r['final_train_loss']:.4f}"]
       for r in rd["rows"]])
  return (f"### Rate-distortion after {rd['steps']} steps\n\n{c['arch']}, "
          f"{rd['num_filters']} filters, λ {rd['lmbda']}, MSE, Adam "
          f"{rd['learning_rate']}, same seed and batches for both, trained on "
          f"{rd.get('training_images', c['training_images'])} in alternating "
          f"chunks of {rd['chunk']} steps (s/step includes tracing and the "
          f"input pipeline); coded with the saved model loaded back (float32): "
          f"{len(rd['images'])} images ({', '.join(rd['images'])}).\n\n{table}")


def run(out_dir="bench/results", parts=("speed", "rd", "inference"), arch="mean_scale_hyperprior",
        filters=(128, 64), batch_size=8, patch_size=128, rounds=4,
        steps_per_round=3, warmup=2, rd_filters=64, rd_steps=300, rd_chunk=50,
        lmbda=0.01, learning_rate=1e-4, val_count=8, explicit=False,
        data_root=DATA):
  """Runs the parts; writes precision.json and precision.md.

  A part not run keeps its results from an earlier precision.json in out_dir
  (so `--part speed` does not discard a long rate-distortion run).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from dpc_tf import precision
  has_bf16, hardware = precision.bfloat16_hardware()
  print(f"bfloat16 hardware: {has_bf16} ({hardware})", flush=True)
  photos, source, val = _data(data_root, patch_size, val_count)
  result = dict(config=dict(arch=arch, batch_size=batch_size,
                            patch_size=patch_size, distortion="mse",
                            optimizer="Adam", training_images=source),
                bfloat16_hardware=has_bf16, hardware=hardware)
  previous = os.path.join(out_dir, "precision.json")
  if os.path.exists(previous):
    with open(previous) as f:
      old = json.load(f)
    for part in ("speed", "rd", "inference"):
      if part not in parts and part in old and old.get("config", {}).get(
          "arch") == arch and old.get("hardware") == hardware:
        result[part] = old[part]

  def write():
    # After each part, so that a long rate-distortion part interrupted on a
    # loaded machine still leaves the speed results.
    sections = [f"Hardware bfloat16 units: **{'yes' if has_bf16 else 'no'}** "
                f"({hardware})."]
    if "speed" in result:
      sections.append(_speed_section(result))
    if "rd" in result:
      sections.append(_rd_section(result))
    if "inference" in result:
      sections.append(_inference_section(result))
    return common.write(out_dir, "precision", result,
                        "## Training precision: float32 vs mixed_bfloat16\n\n"
                        + "\n\n".join(sections))

  if "speed" in parts:
    rows = []
    for num_filters in filters:
      print(f"timing {arch} with {num_filters} filters ...", flush=True)
      rows.append(speed(photos, arch, num_filters, batch_size, patch_size,
                        rounds, steps_per_round, warmup, explicit))
    result["speed"] = dict(rounds=rounds, steps_per_round=steps_per_round,
                           warmup=warmup, rows=rows)
    write()
  if "rd" in parts:
    print(f"rd: {rd_steps} steps per precision, {rd_filters} filters ...",
          flush=True)
    rows = rate_distortion(photos, arch, rd_filters, batch_size, patch_size,
                           rd_steps, rd_chunk, lmbda, learning_rate,
                           [image for _, image in val])
    result["rd"] = dict(num_filters=rd_filters, steps=rd_steps, chunk=rd_chunk,
                        lmbda=lmbda, learning_rate=learning_rate, seed=0,
                        training_images=source,
                        images=[name for name, _ in val], rows=rows)
    write()
  if "inference" in parts:
    print("inference: bfloat16 analysis/synthesis of the zoo's mse model ...", flush=True)
    result["inference"] = inference(val[:4])
  return write()


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--part", nargs="*", default=["speed", "rd", "inference"],
                      choices=("speed", "rd", "inference"))
  parser.add_argument("--arch", default="mean_scale_hyperprior")
  parser.add_argument("--filters", nargs="*", type=int, default=[128, 64])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--patch_size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps_per_round", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rd_filters", type=int, default=64)
  parser.add_argument("--rd_steps", type=int, default=300)
  parser.add_argument("--rd_chunk", type=int, default=50)
  parser.add_argument("--lmbda", type=float, default=0.01)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--val_count", type=int, default=8)
  parser.add_argument("--explicit", action="store_true",
                      help="also time tfc's EXPLICIT-padding convolutions in "
                      "training (slow in bfloat16: minutes per step)")
  parser.add_argument("--data_root", default=DATA,
                      help="folder with train/ and kodak/ (../shared/data)")
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  run(args.out, args.part, args.arch, args.filters, args.batch_size,
      args.patch_size, args.rounds, args.steps_per_round, args.warmup,
      args.rd_filters, args.rd_steps, args.rd_chunk, args.lmbda,
      args.learning_rate, args.val_count, args.explicit, args.data_root)


if __name__ == "__main__":
  main()
