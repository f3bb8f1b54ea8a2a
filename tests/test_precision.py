"""Mixed bfloat16 training: what computes in bfloat16, what stays float32, coding."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf
from dpc_tf import layers, precision, training

MIXED = "mixed_bfloat16"


# -- Hardware detection (fast) ---------------------------------------------------


def _cpuinfo(tmp_path, flags):
  path = tmp_path / "cpuinfo"
  path.write_text(f"processor\t: 0\nflags\t\t: fpu sse avx2 {flags}\n\n"
                  f"processor\t: 1\nflags\t\t: fpu sse avx2 {flags}\n")
  return str(path)


def test_bfloat16_units_are_read_from_the_cpu_flags(tmp_path):
  without = _cpuinfo(tmp_path, "avx512f avx512_vnni")
  assert precision.cpu_flags(without) >= {"avx512f", "avx512_vnni", "fpu"}
  assert precision.bfloat16_hardware(without)[0] is False
  message = precision.slow_precision_warning(MIXED, without)
  assert "no bfloat16 units" in message and "SLOWER" in message
  assert precision.slow_precision_warning("float32", without) is None
  for flag in ("avx512_bf16", "amx_bf16"):
    has = _cpuinfo(tmp_path, f"avx512f {flag}")
    assert precision.bfloat16_hardware(has) == (True, f"CPU with {flag}")
    assert precision.slow_precision_warning(MIXED, has) is None
  missing = str(tmp_path / "nowhere")
  assert precision.cpu_flags(missing) is None
  assert precision.bfloat16_hardware(missing)[0] is False
  with pytest.raises(ValueError, match="Unknown precision policy 'float16'"):
    precision.check_precision("float16")


def test_the_machine_description_names_cpu_cores_and_bfloat16_units(tmp_path):
  cores = len(os.sched_getaffinity(0))
  has = tmp_path / "xeon"
  has.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480\n"
                 "flags\t\t: fpu avx512f amx_bf16 avx512_bf16\n")
  assert precision.machine_description(str(has)) == (
      f"{cores} CPU cores (Intel(R) Xeon(R) Platinum 8480; amx_bf16, "
      "avx512_bf16), no GPU")
  without = _cpuinfo(tmp_path, "avx512f")
  assert precision.machine_description(without).endswith(
      f"{os.uname().machine}; no bfloat16 units), no GPU")
  assert "bfloat16 units unknown" in precision.machine_description(
      str(tmp_path / "nowhere"))


# -- Layers (fast) -----------------------------------------------------------------


def test_a_mixed_transform_computes_bfloat16_only_in_training():
  transform = layers.AnalysisTransform(8, precision=MIXED)
  x = tf.random.uniform([1, 32, 32, 3], seed=0)
  y_train = transform(x, training=True)
  y_test = transform(x, training=False)
  assert y_train.dtype == y_test.dtype == tf.float32
  assert {v.dtype for v in transform.variables} == {tf.float32}
  # Inference is float32, exactly as a float32 transform with the same weights.
  twin = layers.AnalysisTransform.from_config(
      dict(transform.get_config(), precision="float32"))
  twin.build(x.shape)
  twin.set_weights(transform.get_weights())
  np.testing.assert_array_equal(twin(x, training=False), y_test)
  # Training is bfloat16: close (8-bit mantissas), not equal.
  y_float = twin(x, training=True)
  assert not np.array_equal(y_train, y_float)
  np.testing.assert_allclose(y_train, y_float, atol=0.05 * float(
      tf.reduce_max(tf.abs(y_float))))
  assert transform.get_config()["precision"] == MIXED
  with pytest.raises(ValueError, match="Unknown precision policy"):
    layers.SynthesisTransform(8, precision="float16")


def test_set_training_precision_needs_transforms():
  with pytest.raises(ValueError, match="no dpc_tf transforms"):
    layers.set_training_precision(tf.keras.Sequential([tf.keras.layers.Dense(2)]),
                                  MIXED)


# -- Models ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mean_scale_hyperprior", "channelwise"])
def test_only_the_transforms_compute_in_bfloat16(arch):
  from conftest import TINY_HPARAMS
  model = dpc_tf.create_model(arch, **TINY_HPARAMS[arch])
  shape = [2, 64, 64, 3]
  ops = precision.training_step_ops(model, shape)
  assert not [name for name, _, dtype in ops if dtype == "bfloat16"]
  layers.set_training_precision(model, MIXED)
  ops = precision.training_step_ops(model, shape)
  bf16 = [(name, kind) for name, kind, dtype in ops if dtype == "bfloat16"]
  # Forward and gradient convolutions of every transform run in bfloat16 ...
  kinds = {kind for _, kind in bf16}
  assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} <= kinds
  transforms = [m.name for m in model.submodules
                if isinstance(m, layers._Stack)]  # pylint: disable=protected-access
  for name in transforms:
    assert any(f"/{name}/" in op and kind == "Conv2D" for op, kind in bf16), name
  # ... and nothing else: entropy models, rate, quantisation, GDN and the loss
  # are float32. (Kernels are float32 variables cast in their
  # `TRANSFORM/conv_*/kernel` scopes; GDN's only bfloat16 ops are the casts of
  # its gradient.)
  for op, kind in bf16:
    assert (any(f"/{name}/" in op or op.startswith(f"{name}/conv_") for name in transforms)
            or re.match(r"conv_\d+/kernel/", op)), op
    assert "entropy_model" not in op, op
    assert "gdn" not in op or kind == "Cast", op
  entropy = {dtype for name, _, dtype in ops if "entropy_model" in name}
  assert "float32" in entropy and "bfloat16" not in entropy


@pytest.fixture(scope="module")
def mixed_trained(tmp_path_factory):
  """A tiny mean-scale hyperprior trained 4 steps in mixed bfloat16, saved."""
  tf.keras.utils.set_random_seed(0)
  model = dpc_tf.create_model("mean_scale_hyperprior", num_filters=8)
  layers.set_training_precision(model, MIXED)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), distortion="mse",
                lmbda=0.01)
  before = [v.numpy() for v in model.trainable_variables]
  images = np.random.default_rng(0).random((8, 64, 64, 3), np.float32)
  history = model.fit(tf.data.Dataset.from_tensor_slices(images).batch(2),
                      epochs=1, verbose=0)
  path = tmp_path_factory.mktemp("mixed") / "model"
  dpc_tf.save_model(model, path)
  return model, before, history.history, path


def test_mixed_training_runs_with_float32_variables(mixed_trained):
  model, before, history, _ = mixed_trained
  assert all(np.isfinite(history[k][-1]) for k in ("loss", "bpp", "mse"))
  assert {v.dtype for v in model.variables} <= {tf.float32, tf.int32, tf.int64}
  changed = [not np.array_equal(a, v.numpy())
             for a, v in zip(before, model.trainable_variables)]
  assert sum(changed) > len(changed) // 2
  # The rate and the reconstruction reach the loss as float32.
  x_hat, bits = model(tf.zeros([1, 64, 64, 3]), training=True)
  assert x_hat.dtype == bits.dtype == tf.float32


def test_a_mixed_trained_model_codes_like_its_float32_reload(mixed_trained,
                                                             tmp_path):
  model, _, _, path = mixed_trained
  from skimage import data
  image = np.ascontiguousarray(data.astronaut()[:96, :80])
  codec = dpc_tf.load_codec(path)
  stream = codec.encode(image)
  # The trained model in memory compresses in float32: the same bytes.
  assert dpc_tf.Codec(model).encode(image) == stream
  # And another process decodes them to the same pixels.
  (tmp_path / "in.dpc").write_bytes(stream)
  script = ("import sys, numpy as np, dpc_tf\n"
            "codec = dpc_tf.load_codec(sys.argv[1])\n"
            "np.save(sys.argv[3], codec.decode(open(sys.argv[2], 'rb').read()))\n")
  subprocess.run([sys.executable, "-c", script, str(path),
                  str(tmp_path / "in.dpc"), str(tmp_path / "out.npy")],
                 check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                 timeout=300)
  decoded = np.load(tmp_path / "out.npy")
  np.testing.assert_array_equal(decoded, codec.decode(stream))
  assert decoded.shape == image.shape


# -- dpc-train ---------------------------------------------------------------------


def test_train_rejects_an_unknown_precision_policy(tmp_path):
  with pytest.raises(training.TrainingError, match="--precision_policy"):
    training.train(training.TrainConfig(output_dir=str(tmp_path),
                                        train_glob="x/*.png",
                                        precision_policy="float16"))


@pytest.mark.slow
def test_train_with_mixed_bfloat16(tmp_path, caplog, monkeypatch):
  from dpc_tf import data
  photos = tmp_path / "photos"
  data.write_sample_photos(str(photos))
  # Whatever this machine has, the run must say when bfloat16 will be slow.
  monkeypatch.setattr(precision, "bfloat16_hardware",
                      lambda cpuinfo=None: (False, "CPU without avx512_bf16"))
  config = training.TrainConfig(
      output_dir=str(tmp_path / "run"), train_glob=str(photos),
      arch="hyperprior", num_filters=8, patch_size=32, batch_size=2,
      epochs=1, steps_per_epoch=3, seed=0, precision_policy=MIXED, verbose=0)
  with caplog.at_level(logging.WARNING):
    summary = training.train(config)
  assert "SLOWER than in float32" in caplog.text
  assert summary["optimizer_steps"] == 3
  assert np.isfinite(summary["final_logs"]["loss"])
  model = dpc_tf.load_model(tmp_path / "run" / "model")
  assert summary["fingerprint"] == dpc_tf.saving.fingerprint(model)
