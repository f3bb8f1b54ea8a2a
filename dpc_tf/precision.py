"""Training precision: float32, or the transforms in bfloat16 ("mixed_bfloat16").

Mixed bfloat16 is a *training-speed* option and nothing else: only the
convolutions and GDNs of the transforms compute in bfloat16, while every
variable, the entropy models, the quantisation, the rate and the loss stay
float32, and inference and compression always run in float32 (see
`dpc_tf.layers.set_training_precision`). A model trained either way saves the
same float32 weights and codes the same way.

It only pays on hardware with bfloat16 units: Intel CPUs with AVX512_BF16 or
AMX (Cooper Lake, Sapphire Rapids and later), NVIDIA GPUs of compute
capability 8.0 and later, TPUs. Elsewhere oneDNN emulates bfloat16 with float32
instructions plus conversions, and a training step is *slower* than in
float32 (1.5-1.8x on an AVX-512 Cascade Lake CPU without AVX512_BF16:
bench/results/precision.md); `bfloat16_hardware` tells which case applies.
"""

import os

FLOAT32 = "float32"
MIXED_BFLOAT16 = "mixed_bfloat16"
PRECISIONS = (FLOAT32, MIXED_BFLOAT16)

# /proc/cpuinfo flags of x86 bfloat16 instructions (AVX512_BF16: Cooper Lake,
# Zen 4; AMX-BF16: Sapphire Rapids). Without them oneDNN's bfloat16 kernels
# are emulated ("jit_bf16:avx512_core" in ONEDNN_VERBOSE), not accelerated.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_precision(precision):
  """Returns `precision` if it is one of PRECISIONS, else raises ValueError."""
  if precision not in PRECISIONS:
    raise ValueError(f"Unknown precision policy {precision!r}; choose one of "
                     f"{', '.join(PRECISIONS)}.")
  return precision


def _cpuinfo_fields(cpuinfo):
  """[(key, value)] of /proc/cpuinfo's lines, or None where it is missing."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return None
  return [(key.strip(), value.strip()) for key, _, value in
          (line.partition(":") for line in text.splitlines())]


def _flags_of(fields):
  return {flag for key, value in fields if key in ("flags", "Features")
          for flag in value.split()}


def cpu_flags(cpuinfo="/proc/cpuinfo"):
  """The CPU's feature flags (a set), or None where /proc/cpuinfo is missing."""
  fields = _cpuinfo_fields(cpuinfo)
  return None if fields is None else _flags_of(fields)


def bfloat16_hardware(cpuinfo="/proc/cpuinfo"):
  """(has bfloat16 units, description) for the devices training would use.

  GPUs if TensorFlow sees any (all must be of compute capability >= 8.0),
  else the CPU's flags. Unknown (no /proc/cpuinfo, e.g. macOS) counts as no.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capabilities = [tf.config.experimental.get_device_details(gpu).get(
        "compute_capability") for gpu in gpus]
    ok = all(c is not None and tuple(c) >= (8, 0) for c in capabilities)
    return ok, f"GPU compute capabilities {capabilities} (bfloat16 needs >= 8.0)"
  flags = cpu_flags(cpuinfo)
  if flags is None:
    return False, f"CPU flags unknown ({cpuinfo} unreadable)"
  found = sorted(set(CPU_BF16_FLAGS) & flags)
  if found:
    return True, f"CPU with {', '.join(found)}"
  return False, (f"CPU without {' or '.join(CPU_BF16_FLAGS)} in {cpuinfo} "
                 f"({os.uname().machine})")


def machine_description(cpuinfo="/proc/cpuinfo"):
  """What a run's CPU-hours were counted on, for its record and model card:
  e.g. "2 CPU cores (Intel(R) Xeon(R) Processor; amx_bf16, avx512_bf16), no
  GPU". Cores are those this process may run on; bfloat16 units are named
  because they change a step's time 1.4-3x (module doc)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count()
  fields = _cpuinfo_fields(cpuinfo)
  model = next((value for key, value in fields or () if key == "model name"), None)
  if fields is None:
    units = "bfloat16 units unknown"
  else:
    units = (", ".join(sorted(set(CPU_BF16_FLAGS) & _flags_of(fields)))
             or "no bfloat16 units")
  cpu = f"{model or os.uname().machine}; {units}"
  gpus = tf.config.list_physical_devices("GPU")
  gpu = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
  return f"{cores} CPU cores ({cpu}), {gpu}"


def slow_precision_warning(precision, cpuinfo="/proc/cpuinfo"):
  """A warning to log if `precision` will be slow on this machine, else None."""
  if check_precision(precision) != MIXED_BFLOAT16:
    return None
  ok, what = bfloat16_hardware(cpuinfo)
  if ok:
    return None
  return (f"--precision_policy=mixed_bfloat16 on a {what}: there are no "
          "bfloat16 units, oneDNN emulates bfloat16 and training will be "
          "SLOWER than in float32 (1.5-1.8x on AVX-512 CPUs without AVX512_BF16: "
          "bench/results/precision.md). It "
          "still trains correctly; use float32 on this machine.")



def training_step_ops(model, batch_shape):
  """[(name, type, dtype name)] of the ops of a traced training step of `model`.

  Traces the forward pass with `training=True`, the rate, a mean squared
  error and the gradients (what `train_step` runs, without the optimizer), so
  one can see which operations a precision runs in bfloat16: the
  convolutions and their gradients should, the entropy models must not. An
  op's dtype is that of its first output ("" for ops without outputs).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function  # With AutoGraph, as Keras traces a train step.
  def step(x):
    with tf.GradientTape() as tape:
      x_hat, bits = model(x, training=True)
      loss = tf.reduce_mean(bits) + tf.reduce_mean(tf.square(x - x_hat))
    return tape.gradient(loss, model.trainable_variables)

  graph = step.get_concrete_function(tf.TensorSpec(batch_shape, tf.float32)).graph
  return [(op.name, op.type, op.outputs[0].dtype.name if op.outputs else "")
          for op in graph.get_operations()]
