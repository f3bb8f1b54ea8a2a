"""tf.distribute on this CPU machine: mirrored replicas and multi-worker runs.

Each test starts fresh Python processes: logical CPU devices must be set up
before TensorFlow initialises, and multi-worker runs need one process per
worker. A worker whose peer is gone waits forever and TensorFlow catches
SIGTERM, so processes run in their own process group and are SIGKILLed on
timeout.
"""

import json
import os
import socket
import subprocess
import textwrap

import pytest

import dpc_tf
from dpc_tf import data
import support

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
TIMEOUT = 900


def finish(process, timeout=TIMEOUT):
  """Waits for a process (SIGKILL on timeout); returns its output."""
  return support.finish(process, timeout)[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  data.write_sample_photos(str(folder))
  return str(folder)


def test_one_step_on_two_replicas_equals_one_step_on_one_device():
  """Loss scaling: the same SGD update from 2 replicas as from 1 device.

  The rate term uses random noise, which differs between one device and two
  replicas, so the distortion is weighed 1e8 times the rate and the learning
  rate scaled down as much: the rate's share of the step is ~1e-8. The scaling
  under test (the average over the global batch) applies to the whole
  per-image loss.
  """
  script = textwrap.dedent("""
      import json
      import numpy as np
      from dpc_tf import training
      training.split_cpu(2)
      import skimage.data
      import tensorflow as tf
      import dpc_tf

      photos = [skimage.data.astronaut(), skimage.data.coffee(),
                skimage.data.chelsea(), skimage.data.rocket()]
      batch = np.stack([p[100:132, 100:132] for p in photos]) / np.float32(255)
      dataset = tf.data.Dataset.from_tensors(batch.astype(np.float32))
      single = dpc_tf.create_model("hyperprior", num_filters=8)
      strategy = training.make_strategy("mirrored")
      assert strategy.num_replicas_in_sync == 2
      with strategy.scope():
        mirrored = dpc_tf.create_model("hyperprior", num_filters=8)
      for target, source in zip(mirrored.variables, single.variables):
        target.assign(source)
      initial = [v.numpy() for v in single.trainable_variables]

      def one_step(model, strategy, batches):
        with strategy.scope():
          model.compile(optimizer=tf.keras.optimizers.SGD(0.5e-8),
                        distortion="mse", lmbda=1e8 / 255**2)
        model.make_train_function()(iter(batches))
        return [v.numpy() for v in model.trainable_variables]

      after_single = one_step(single, tf.distribute.get_strategy(), dataset)
      after_mirrored = one_step(
          mirrored, strategy, strategy.experimental_distribute_dataset(dataset))
      step = lambda after: np.concatenate(
          [(a - i).ravel() for a, i in zip(after, initial)])
      print(json.dumps(dict(single=step(after_single).tolist(),
                            mirrored=step(after_mirrored).tolist())))
      """)
  output = finish(support.start_python(["-c", script]))
  steps = json.loads(output.strip().splitlines()[-1])
  import numpy as np
  single, mirrored = np.array(steps["single"]), np.array(steps["mirrored"])
  assert np.abs(single).max() > 1e-2  # The step is large enough to tell.
  np.testing.assert_allclose(mirrored, single, rtol=0, atol=1e-5)


def test_mirrored_training_program_on_two_cpu_devices(photos, tmp_path):
  output = finish(support.start_python([
      "-m", "train", "--strategy=mirrored", "--cpu_devices=2",
      f"--train_glob={photos}", f"--output_dir={tmp_path / 'run'}",
      "--arch=factorized", "--num_filters=8", "--patch_size=32",
      "--batch_size=4", "--steps_per_epoch=3", "--epochs=1", "--verbose=2"]))
  summary_path = tmp_path / "run" / "run_summary.json"
  assert summary_path.exists(), output[-3000:]
  summary = json.loads(summary_path.read_text())
  assert summary["replicas"] == 2 and summary["optimizer_steps"] == 3
  assert dpc_tf.load_model(tmp_path / "run" / "model").architecture == "factorized"


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_multi_worker_training_ends_with_identical_weights(photos, tmp_path):
  workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
  output_dir = tmp_path / "run"
  processes, logs = [], []
  try:
    for index in range(2):
      tf_config = {"cluster": {"worker": workers},
                   "task": {"type": "worker", "index": index}}
      log = open(tmp_path / f"worker{index}.log", "w")
      logs.append(log)
      processes.append(support.start_python([
          "-m", "train", "--strategy=multi_worker", f"--train_glob={photos}",
          f"--val_glob={photos}", f"--output_dir={output_dir}",
          "--arch=factorized", "--num_filters=8", "--patch_size=32",
          "--batch_size=4", "--steps_per_epoch=3", "--epochs=2",
          "--checkpoint_every=2", "--seed=0", "--val_images=1",
          "--val_image_size=64", "--verbose=2"],
          env={"TF_CONFIG": json.dumps(tf_config)}, log=log))
    codes = []
    for process in processes:
      try:
        codes.append(process.wait(timeout=TIMEOUT))
      except subprocess.TimeoutExpired:
        codes.append(None)
  finally:
    for process in processes:
      support.kill(process)
    for log in logs:
      log.close()
  outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
  fingerprints = [
      [line.split("fingerprint ")[1].split()[0] for line in o.splitlines()
       if "Final model fingerprint" in line] for o in outputs]
  assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]
  # Only the chief (worker 0) wrote the model, summary and logs.
  summary = json.loads((output_dir / "run_summary.json").read_text())
  assert summary["replicas"] == 2 and summary["chief"]
  assert summary["optimizer_steps"] == 6
  model = dpc_tf.load_model(output_dir / "model")
  assert dpc_tf.saving.fingerprint(model) == fingerprints[0][0]
  leftovers = [p for p in os.listdir(output_dir / "logs") if "workertemp" in p]
  assert not leftovers
