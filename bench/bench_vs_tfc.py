"""Our hyperprior codec against tfc's reference model, side by side, with GFLOP/s.

    nice -n 10 python -m bench.bench_vs_tfc [--images 'kodak/*.png'] [--limit 4] [--rounds 5]

The reference is a compact equivalent of tensorflow/compression's
models/bmshj2018.py (the pip package does not ship models/): the same
transforms (tfc.SignalConv2D + GDN, 192 filters, hyper-transforms with
"variable" kernels), NoisyDeepFactorized side prior, a 64-scale
LocationScaleIndexedEntropyModel, and `compress`/`decompress` as
tf.functions with input signatures whose spatial dimensions are None, as
bmshj2018 traces them. Ours is `dpc_tf.Codec` on the default `hyperprior`
(the same architecture and sizes), bytes in and out (container, CRC and
header checks included). Both untrained and seeded: speed depends on tensor
sizes, not weights (untrained latents are small, so range coding is cheap
for both).

Timing: after a warm-up image (tracing), `--rounds` interleaved rounds over
the images, alternating which codec goes first; medians over rounds of the
per-round totals, and the ratio ours / tfc of the medians. Ratios, not times,
are the result on a shared machine. Retracing: each tf.function's tracing
count after images of two other sizes (a Kodak portrait and a crop) must
still be 1. GFLOP/s: FLOPs counted analytically from the layers' shapes
(`transform_flops`: 2 per multiply-add of every convolution, transposed ones
counted per input sample, and GDN's 1x1 normalisation as a C x C
convolution), encoding = analysis + hyper-analysis + hyper-synthesis,
decoding = hyper-synthesis + synthesis, per image / median time.
"""

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

from bench import common

NUM_FILTERS = 192


def reference_model(num_filters=NUM_FILTERS, num_scales=64, scale_min=0.11,
                    scale_max=256.0):
  """bmshj2018's hyperprior (compress/decompress traced once, any size)."""
  import tensorflow as tf
  import tensorflow_compression as tfc

  def conv(filters, kernel, corr, down=1, up=1, activation=None, bias=True,
           parameter="rdft", name=None):
    return tfc.SignalConv2D(filters, (kernel, kernel), name=name, corr=corr,
                            strides_down=down, strides_up=up, padding="same_zeros",
                            use_bias=bias, activation=activation,
                            kernel_parameter=parameter)

  analysis = tf.keras.Sequential(
      [tf.keras.layers.Lambda(lambda x: x / 255.)] +
      [conv(num_filters, 5, True, down=2, activation=tfc.GDN(name=f"gdn_{i}"),
            name=f"layer_{i}") for i in range(3)] +
      [conv(num_filters, 5, True, down=2, name="layer_3")], name="analysis")
  synthesis = tf.keras.Sequential(
      [conv(num_filters, 5, False, up=2, name=f"layer_{i}",
            activation=tfc.GDN(name=f"igdn_{i}", inverse=True)) for i in range(3)] +
      [conv(3, 5, False, up=2, name="layer_3"),
       tf.keras.layers.Lambda(lambda x: x * 255.)], name="synthesis")
  hyper_analysis = tf.keras.Sequential([
      conv(num_filters, 3, True, activation=tf.nn.relu, name="layer_0"),
      conv(num_filters, 5, True, down=2, activation=tf.nn.relu, name="layer_1"),
      conv(num_filters, 5, True, down=2, bias=False, name="layer_2")],
      name="hyper_analysis")
  hyper_synthesis = tf.keras.Sequential([
      conv(num_filters, 5, False, up=2, activation=tf.nn.relu,
           parameter="variable", name="layer_0"),
      conv(num_filters, 5, False, up=2, activation=tf.nn.relu,
           parameter="variable", name="layer_1"),
      conv(num_filters, 3, False, parameter="variable", name="layer_2")],
      name="hyper_synthesis")
  analysis.build((None, None, None, 3))
  synthesis.build((None, None, None, num_filters))
  hyper_analysis.build((None, None, None, num_filters))
  hyper_synthesis.build((None, None, None, num_filters))
  hyperprior = tfc.NoisyDeepFactorized(batch_shape=(num_filters,))
  offset = tf.math.log(scale_min)
  factor = (tf.math.log(scale_max) - tf.math.log(scale_min)) / (num_scales - 1.)
  # What bmshj2018's fit() builds before it saves the model.
  entropy_model = tfc.LocationScaleIndexedEntropyModel(
      tfc.NoisyNormal, num_scales, lambda i: tf.math.exp(offset + factor * i),
      coding_rank=3, compression=True)
  side_entropy_model = tfc.ContinuousBatchedEntropyModel(
      hyperprior, coding_rank=3, compression=True)

  @tf.function(input_signature=[tf.TensorSpec(shape=(None, None, 3), dtype=tf.uint8)])
  def compress(x):
    x = tf.cast(tf.expand_dims(x, 0), tf.float32)
    y = analysis(x)
    z = hyper_analysis(abs(y))
    y_shape, z_shape = tf.shape(y)[1:-1], tf.shape(z)[1:-1]
    z_hat, _ = side_entropy_model(z, training=False)
    indexes = hyper_synthesis(z_hat)[:, :y_shape[0], :y_shape[1], :]
    return (entropy_model.compress(y, indexes), side_entropy_model.compress(z),
            tf.shape(x)[1:-1], y_shape, z_shape)

  @tf.function(input_signature=[tf.TensorSpec(shape=(1,), dtype=tf.string),
                                tf.TensorSpec(shape=(1,), dtype=tf.string)] +
               [tf.TensorSpec(shape=(2,), dtype=tf.int32)] * 3)
  def decompress(string, side_string, x_shape, y_shape, z_shape):
    z_hat = side_entropy_model.decompress(side_string, z_shape)
    indexes = hyper_synthesis(z_hat)[:, :y_shape[0], :y_shape[1], :]
    y_hat = entropy_model.decompress(string, indexes)
    x_hat = synthesis(y_hat)[0, :x_shape[0], :x_shape[1], :]
    return tf.saturate_cast(tf.round(x_hat), tf.uint8)

  transforms = dict(analysis=analysis, synthesis=synthesis,
                    hyper_analysis=hyper_analysis, hyper_synthesis=hyper_synthesis)
  return compress, decompress, transforms


def transform_flops(layers, height, width, channels):
  """FLOPs of a stack of tfc.SignalConv2D layers on a [height, width, channels] input."""
  import tensorflow_compression as tfc
  flops = 0
  for layer in layers:
    if not isinstance(layer, tfc.SignalConv2D):
      continue
    kh, kw = layer.kernel_support
    (uh, uw), (dh, dw) = (
        (s, s) if isinstance(s, int) else tuple(s)
        for s in (layer.strides_up, layer.strides_down))
    macs_per_sample = kh * kw * channels * layer.filters
    if uh * uw > 1:  # Transposed: each input sample is spread over k x k.
      flops += 2 * height * width * macs_per_sample
      height, width = height * uh, width * uw
    else:
      height, width = -(-height // dh), -(-width // dw)
      flops += 2 * height * width * macs_per_sample
    channels = layer.filters
    if isinstance(layer.activation, tfc.GDN):
      flops += 2 * height * width * channels * channels  # 1x1 C x C on x^2.
  return flops, (height, width, channels)


def _layers(transform):
  return transform._stack if hasattr(transform, "_stack") else transform.layers  # pylint: disable=protected-access


def coding_flops(transforms, height, width, num_filters=NUM_FILTERS):
  """(encode FLOPs, decode FLOPs) of one height x width image."""
  analysis, (h, w, c) = transform_flops(_layers(transforms["analysis"]), height, width, 3)
  hyper_analysis, (zh, zw, zc) = transform_flops(
      _layers(transforms["hyper_analysis"]), h, w, c)
  hyper_synthesis, _ = transform_flops(_layers(transforms["hyper_synthesis"]), zh, zw, zc)
  synthesis, _ = transform_flops(_layers(transforms["synthesis"]), h, w, num_filters)
  return analysis + hyper_analysis + hyper_synthesis, hyper_synthesis + synthesis


def run(out_dir="bench/results", image_paths=None, limit=4, rounds=5):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf
  import dpc_tf
  paths = image_paths if image_paths is not None else common.default_images()
  named = common.load_images(paths, limit)
  named = [(n, im[..., :3]) for n, im in named]
  tf.keras.utils.set_random_seed(0)
  with tempfile.TemporaryDirectory() as workdir:
    dpc_tf.save_model(dpc_tf.create_model("hyperprior", num_filters=NUM_FILTERS),
                      os.path.join(workdir, "model"))
    start = time.perf_counter()
    ours = dpc_tf.load_codec(os.path.join(workdir, "model"))
    ours_load_s = time.perf_counter() - start
  tf.keras.utils.set_random_seed(0)
  start = time.perf_counter()
  ref_compress, ref_decompress, ref_transforms = reference_model()
  ref_build_s = time.perf_counter() - start
  ours_transforms = {k: getattr(ours.model, f"{k}_transform") for k in
                     ("analysis", "synthesis", "hyper_analysis", "hyper_synthesis")}

  # Warm-up: traces each codec's functions once.
  first = named[0][1]
  ours.decode(ours.encode(first))
  ref_decompress(*ref_compress(first))
  # Images of two other sizes must not retrace.
  portrait = np.ascontiguousarray(np.transpose(first, (1, 0, 2)))
  crop = np.ascontiguousarray(first[:320, :448])
  for image in (portrait, crop):
    ours.decode(ours.encode(image))
    ref_decompress(*ref_compress(image))
  traces = {f"ours {k}": ours.model._traced(k).experimental_get_tracing_count()  # pylint: disable=protected-access
            for k in ("compress", "decompress")}
  traces.update({"tfc compress": ref_compress.experimental_get_tracing_count(),
                 "tfc decompress": ref_decompress.experimental_get_tracing_count()})

  times = {k: [] for k in ("ours_encode", "ours_decode", "tfc_encode", "tfc_decode")}
  for r in range(rounds):
    totals = dict.fromkeys(times, 0.0)
    for _, image in named:
      order = ("ours", "tfc") if r % 2 == 0 else ("tfc", "ours")
      for who in order:
        if who == "ours":
          t = time.perf_counter()
          data = ours.encode(image)
          totals["ours_encode"] += time.perf_counter() - t
          t = time.perf_counter()
          ours.decode(data)
          totals["ours_decode"] += time.perf_counter() - t
        else:
          t = time.perf_counter()
          coded = [v.numpy() for v in ref_compress(image)]  # Bytes out, as ours.
          totals["tfc_encode"] += time.perf_counter() - t
          t = time.perf_counter()
          ref_decompress(*coded).numpy()
          totals["tfc_decode"] += time.perf_counter() - t
    for k, v in totals.items():
      times[k].append(v / len(named))
    print(f"round {r + 1}/{rounds}: " + ", ".join(
        f"{k} {1e3 * v / len(named):.0f} ms" for k, v in totals.items()), flush=True)
  medians = {k: float(np.median(v)) for k, v in times.items()}
  pixels = [im.shape[0] * im.shape[1] for _, im in named]
  flops = [coding_flops(ours_transforms, im.shape[0], im.shape[1]) for _, im in named]
  ref_flops = [coding_flops(ref_transforms, im.shape[0], im.shape[1]) for _, im in named]
  assert flops == ref_flops, (flops, ref_flops)  # The same architecture.
  encode_gflop = np.mean([f[0] for f in flops]) / 1e9
  decode_gflop = np.mean([f[1] for f in flops]) / 1e9
  rows = []
  for step, gflop in (("encode", encode_gflop), ("decode", decode_gflop)):
    o, t = medians[f"ours_{step}"], medians[f"tfc_{step}"]
    rows.append(dict(step=step, ours_ms=1e3 * o, tfc_ms=1e3 * t, ratio=o / t,
                     gflop_per_image=gflop, ours_gflop_s=gflop / o, tfc_gflop_s=gflop / t))
  result = dict(images=[n for n, _ in named], rounds=rounds, times_s=times,
                medians_s=medians, rows=rows, traces=traces,
                ours_load_s=ours_load_s, tfc_build_s=ref_build_s,
                mean_megapixels=float(np.mean(pixels)) / 1e6,
                load_average=os.getloadavg())
  table = common.markdown_table(
      ["step", "ours ms", "tfc reference ms", "ours / tfc", "GFLOP per image",
       "ours GFLOP/s", "tfc GFLOP/s"],
      [[r["step"], f"{r['ours_ms']:.0f}", f"{r['tfc_ms']:.0f}", f"{r['ratio']:.2f}",
        f"{r['gflop_per_image']:.1f}", f"{r['ours_gflop_s']:.1f}",
        f"{r['tfc_gflop_s']:.1f}"] for r in rows])
  note = (f"{len(named)} images ({', '.join(n for n, _ in named[:4])}), "
          f"{NUM_FILTERS}-filter hyperprior, untrained, medians of {rounds} interleaved "
          f"rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(a shared machine: the ratios are the result). Tracing counts after "
          f"three image sizes: {traces}. Loading our saved model: "
          f"{ours_load_s:.2f} s; building the reference and its range-coding "
          f"tables in process: {ref_build_s:.2f} s")
  return common.write(out_dir, "vs_tfc", result,
                      f"## Ours vs tfc's reference hyperprior\n\n{note}.\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", help="glob (default: Kodak beside the checkout)")
  parser.add_argument("--limit", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default="bench/results")
  args = parser.parse_args(argv)
  paths = sorted(glob.glob(args.images)) if args.images else None
  run(args.out, paths, args.limit, args.rounds)
  return 0


if __name__ == "__main__":
  sys.exit(main())
