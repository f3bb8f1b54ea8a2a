"""What training optimises: the rate term's gradient and the quantisation proxies.

Each test here fails on a deliberate bug that leaves the other training tests
green (docs/mutation_check.md): the rate term cut from the gradient, or one
`quantization_proxy` silently behaving like the other.
"""

import numpy as np
import pytest
import tensorflow as tf

import dpc_tf


@pytest.fixture(scope="module")
def batch():
  """Eight 64x64 crops of a real photo, float32 in [0, 1]."""
  from skimage import data
  photo = data.astronaut().astype(np.float32) / 255.0
  corners = np.random.default_rng(0).integers(0, 512 - 64, (8, 2))
  return tf.constant(np.stack([photo[i:i + 64, j:j + 64] for i, j in corners]))


def _model(proxy="ste", lmbda=0.01, seed=0, learning_rate=1e-2):
  """A seeded tiny factorized model, compiled; the same weights for one seed."""
  tf.keras.utils.set_random_seed(seed)
  model = dpc_tf.create_model("factorized", num_filters=8)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                distortion="mse", lmbda=lmbda, quantization_proxy=proxy)
  return model


def _train(model, batch, steps):
  """`steps` training steps on one batch; returns the first and last logs.

  Keras's own train function (what fit() runs), without fit()'s update() of
  the coding tables, which these tests do not need.
  """
  train = model.make_train_function()
  batches = iter(tf.data.Dataset.from_tensors(batch).repeat())
  logs = [{k: float(v) for k, v in train(batches).items()} for _ in range(steps)]
  return logs[0], logs[-1]


def _flat(variables):
  return np.concatenate([v.numpy().ravel() for v in variables])


def test_rate_term_reaches_the_gradient(batch):
  """loss = bpp + λ·D: the rate must reach the gradient.

  A rate cut from the gradient (bpp through tf.stop_gradient) leaves λ·D
  alone. Then the prior, which only the rate depends on, does not train; and
  since Adam's step does not depend on the gradient's scale, a tiny λ takes
  the same step as a large one. Here, from the same start and the same noise,
  the analysis transform's first step at λ = 1e-6 (rate-dominated) agrees in
  sign with the step at λ = 0.05 for ~60 % of its weights; the synthesis,
  which the rate does not depend on, for over 99 %.
  """
  steps = {}
  for lmbda in (1e-6, 0.05):
    model = _model(lmbda=lmbda, seed=1)
    prior, analysis = (_flat(model.prior.trainable_variables),
                       _flat(model.analysis_transform.trainable_variables))
    _train(model, batch, steps=1)
    assert np.abs(_flat(model.prior.trainable_variables) - prior).min() > 0, (
        f"the prior did not train at λ={lmbda}")
    steps[lmbda] = np.sign(_flat(model.analysis_transform.trainable_variables)
                           - analysis)
  agree = np.mean(steps[1e-6] == steps[0.05])
  assert agree < 0.8, f"λ hardly changes the step: {agree:.1%} of signs agree"


def test_ste_proxy_reconstructs_from_the_rounded_latents_in_training(batch):
  model = _model(proxy="ste")
  x_train, bits_train = model(batch, training=True)
  x_eval, bits_eval = model(batch, training=False)
  # The synthesis sees round(y) (as when coding) ...
  np.testing.assert_allclose(x_train, x_eval, rtol=0, atol=1e-6)
  # ... while the rate still comes from additive noise.
  assert np.abs(bits_train.numpy() - bits_eval.numpy()).max() > 0.01
  # Straight-through: the distortion's gradient crosses the rounding and
  # reaches the analysis transform (tf.round alone would give zero).
  with tf.GradientTape() as tape:
    x_hat, _ = model(batch, training=True)
    distortion = tf.reduce_mean(tf.square(batch - x_hat))
  gradients = tape.gradient(distortion,
                            model.analysis_transform.trainable_variables)
  assert all(g is not None for g in gradients)
  assert max(float(tf.reduce_max(tf.abs(g))) for g in gradients) > 0


def test_noise_proxy_reconstructs_from_noisy_latents_in_training(batch):
  model = _model(proxy="noise")
  x_a, _ = model(batch, training=True)
  x_b, _ = model(batch, training=True)
  x_eval, _ = model(batch, training=False)
  # Fresh uniform noise at each call, so neither the rounded reconstruction
  # nor the previous call's.
  assert np.abs(x_a.numpy() - x_b.numpy()).max() > 1e-3
  assert np.abs(x_a.numpy() - x_eval.numpy()).max() > 1e-3


@pytest.mark.parametrize("proxy", ["ste", "noise"])
def test_training_with_each_proxy_lowers_the_loss(batch, proxy):
  first, last = _train(_model(proxy=proxy), batch, steps=30)
  assert last["loss"] < 0.7 * first["loss"], (first, last)


def test_ste_and_noise_train_different_models_from_one_start(batch):
  """One step from the same weights and the same random draws: the two
  proxies give different updates, and a repeat gives the same one (so the
  difference is the proxy, not chance)."""
  def synthesis_after_one_step(proxy):
    model = _model(proxy=proxy, seed=1)
    _train(model, batch, steps=1)
    return np.concatenate([v.numpy().ravel() for v in
                           model.synthesis_transform.trainable_variables])

  ste = synthesis_after_one_step("ste")
  np.testing.assert_array_equal(synthesis_after_one_step("ste"), ste)
  noise = synthesis_after_one_step("noise")
  changed = np.abs(noise - ste) > 1e-6 * (1 + np.abs(ste))
  assert changed.mean() > 0.5, f"only {changed.mean():.0%} of weights differ"
