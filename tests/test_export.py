"""dpc-export: SavedModels for TF Serving that code exactly as the library does."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data

import dpc_tf
from dpc_tf import container, serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def python(args, timeout=600, **kwargs):
  """Runs the venv's Python in a fresh process from the checkout."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


def run_script(source, *args):
  result = python(["-c", textwrap.dedent(source)] + [str(a) for a in args])
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A tiny trained-shape model saved, then exported by the program."""
  root = tmp_path_factory.mktemp("export")
  model = dpc_tf.create_model("hyperprior", num_filters=8)
  model.update()
  model_dir = root / "run" / "model"
  dpc_tf.save_model(model, model_dir)
  # The export program finds the model inside a training output_dir.
  result = python(["-m", "export", f"--model_dir={root / 'run'}",
                   f"--export_dir={root / 'serving'}", "--name=tiny"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compress(image: uint8" in result.stdout
  model = dpc_tf.load_model(model_dir)
  return dict(model=model, codec=dpc_tf.Codec(model), model_dir=str(model_dir),
              base=str(root / "serving"),
              full=str(root / "serving" / "tiny" / "1"),
              core=str(root / "serving" / "tiny_core" / "1"), root=root)


def photo():
  # Sides that are not multiples of the model's stride exercise the padding.
  return skimage.data.astronaut()[150:250, 180:257]


def test_layout_follows_tf_serving(exported):
  for path in (exported["full"], exported["core"]):
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
  info = serving.read_info(exported["full"])
  model = exported["model"]
  assert info["architecture"] == "hyperprior"
  assert info["config"] == model.get_config()
  assert info["fingerprint"] == dpc_tf.saving.read_model_info(
      exported["model_dir"])["fingerprint"]
  assert set(info["signatures"]) == set(serving.FULL_SIGNATURES)
  assert set(serving.read_info(exported["core"])["signatures"]) == set(
      serving.CORE_SIGNATURES)
  # No leftovers of the staged export next to the models.
  assert sorted(os.listdir(exported["base"])) == ["tiny", "tiny_core"]


def test_signatures_round_trip_bit_identical_in_a_fresh_process(exported, tmp_path):
  image = photo()
  np.save(tmp_path / "image.npy", image)
  run_script("""
      import sys
      import numpy as np
      import tensorflow as tf
      import tensorflow_compression  # Registers the range-coding ops.
      import dpc_tf
      full, image_path, out = sys.argv[1:]
      image = np.load(image_path)
      loaded = tf.saved_model.load(full)
      coded = loaded.signatures["compress"](image=tf.constant(image))
      decoded = loaded.signatures["decompress"](
          image_shape=coded["image_shape"], z=coded["z"], y=coded["y"])["image"]
      codec = dpc_tf.load_codec(full)
      data = codec.encode(image)
      np.savez(out, z=coded["z"].numpy(), y=coded["y"].numpy(),
               shape=coded["image_shape"].numpy(), decoded=decoded.numpy(),
               data=np.frombuffer(data, np.uint8),
               codec_decoded=codec.decode(data), type=type(codec).__name__)
      """, exported["full"], tmp_path / "image.npy", tmp_path / "out.npz")
  out = np.load(tmp_path / "out.npz")
  model, codec = exported["model"], exported["codec"]
  library = model.compress_image(image)
  assert out["z"].item() == library["z"].numpy()
  assert out["y"].item() == library["y"].numpy()
  assert list(out["shape"]) == [100, 77]
  expected = model.decompress_image(library["image_shape"], library["z"],
                                    library["y"]).numpy()
  np.testing.assert_array_equal(out["decoded"], expected)
  # Through the Codec API: the same .dpc bytes and pixels as dpc_tf.Codec.
  assert str(out["type"]) == "SavedModelCodec"
  data = codec.encode(image)
  assert out["data"].tobytes() == data
  np.testing.assert_array_equal(out["codec_decoded"], codec.decode(data))
  np.testing.assert_array_equal(out["codec_decoded"], expected)


def test_core_model_loads_without_tensorflow_compression(exported, tmp_path):
  image = photo()
  np.save(tmp_path / "image.npy", image)
  run_script("""
      import sys
      import numpy as np
      import tensorflow as tf
      core, image_path, out = sys.argv[1:]
      image = np.load(image_path)
      loaded = tf.saved_model.load(core)
      latents = loaded.signatures["latents"](image=tf.constant(image))["latents"]
      decoded = loaded.signatures["from_latents"](
          latents=latents, image_shape=tf.constant(image.shape[:2]))["image"]
      assert "tensorflow_compression" not in sys.modules, "tfc was imported"
      np.savez(out, latents=latents.numpy(), decoded=decoded.numpy())
      """, exported["core"], tmp_path / "image.npy", tmp_path / "out.npz")
  out = np.load(tmp_path / "out.npz")
  model = exported["model"]
  latents = model.image_latents(image)
  np.testing.assert_array_equal(out["latents"], latents.numpy())
  np.testing.assert_array_equal(
      out["decoded"], model.image_from_latents(latents, image.shape[:2]).numpy())
  assert out["decoded"].shape == image.shape


def test_core_model_holds_no_tfc_ops_or_tables(exported):
  info = serving.read_info(exported["core"])
  assert info["custom_ops"] == []
  assert "CreateRangeEncoder" in serving.read_info(exported["full"])["custom_ops"]
  import tensorflow as tf
  core_vars = tf.train.list_variables(os.path.join(exported["core"], "variables",
                                                   "variables"))
  full_vars = tf.train.list_variables(os.path.join(exported["full"], "variables",
                                                   "variables"))
  assert 0 < len(core_vars) < len(full_vars)
  assert not any("cdf" in name for name, _ in core_vars)


def test_saved_model_cli_lists_the_signatures(exported):
  cli = ["-m", "tensorflow.python.tools.saved_model_cli", "show"]
  core = python(cli + ["--all", "--dir", exported["core"]])
  assert core.returncode == 0, core.stderr[-2000:]
  for name in serving.CORE_SIGNATURES:
    assert f"signature_def['{name}']" in core.stdout
  # `--all` on the full model also loads it, which needs tfc's ops; listing
  # the signatures of its tag set does not.
  full = python(cli + ["--dir", exported["full"], "--tag_set", "serve"])
  assert full.returncode == 0, full.stderr[-2000:]
  for name in serving.FULL_SIGNATURES:
    assert f'SignatureDef key: "{name}"' in full.stdout
  full_all = python(cli + ["--all", "--dir", exported["full"]])
  for name in serving.FULL_SIGNATURES:
    assert f"signature_def['{name}']" in full_all.stdout


def test_dpc_command_compresses_with_a_saved_model(exported, tmp_path):
  image = photo()
  dpc_tf.write_image(tmp_path / "photo.png", image)
  dpc = ["-m", "dpc_tf.cli"]
  result = python(dpc + ["compress", "-m", os.path.dirname(exported["full"]),
                         str(tmp_path / "photo.png")])
  assert result.returncode == 0, result.stderr[-2000:]
  data = (tmp_path / "photo.dpc").read_bytes()
  assert data == exported["codec"].encode(image)
  result = python(dpc + ["decompress", "-m", exported["full"],
                         str(tmp_path / "photo.dpc"), "-o", str(tmp_path / "out.png")])
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_array_equal(dpc_tf.read_image(tmp_path / "out.png"),
                                exported["codec"].decode(data))
  info = python(dpc + ["info", exported["base"] + "/tiny", exported["core"]])
  assert info.returncode == 0, info.stderr[-2000:]
  assert "full (range coding" in info.stdout and "core (core TensorFlow" in info.stdout
  assert exported["codec"].model_id in info.stdout
  # The core model cannot code .dpc files: a clear error, not a traceback.
  result = python(dpc + ["compress", "-m", exported["core"],
                         str(tmp_path / "photo.png"), "-o", str(tmp_path / "x.dpc")])
  assert result.returncode != 0 and "core-op SavedModel" in result.stderr


def test_saved_model_codec_reads_and_writes_library_bitstreams(exported):
  codec = exported["codec"]
  served = dpc_tf.load_codec(exported["full"])
  assert isinstance(served, serving.SavedModelCodec)
  assert served.model_id == codec.model_id
  rng = np.random.RandomState(0)
  gray = skimage.data.camera()[:40, :50]
  rgba = np.concatenate([photo()[:33, :45], rng.randint(0, 255, (33, 45, 1),
                                                        np.uint8)], axis=-1)
  for image in (photo(), gray, rgba):
    data = codec.encode(image)
    assert served.encode(image) == data
    np.testing.assert_array_equal(served.decode(data), codec.decode(data))
  # A bitstream of another model (same architecture, other weights) is refused.
  stream = container.unpack(codec.encode(gray))
  header = dataclasses.replace(stream.header, fingerprint=b"\0" * 8)
  with pytest.raises(container.ModelMismatchError):
    served.decode(container.pack(dataclasses.replace(stream, header=header)))


def test_export_versions_and_overwrite(exported):
  model = exported["model"]
  base = str(exported["root"] / "versions")
  first = serving.export(model, base, "m", core=False)
  second = serving.export(model, base, "m", core=False)
  assert (first["version"], second["version"]) == (1, 2)
  assert first["core"] is None and not os.path.exists(os.path.join(base, "m_core"))
  with pytest.raises(FileExistsError, match="overwrite"):
    serving.export(model, base, "m", version=1)
  # The model folder resolves to its highest version, as in TF Serving.
  assert serving.resolve(os.path.join(base, "m")) == second["full"]
  with open(os.path.join(second["full"], serving.INFO_DIR, serving.INFO_FILE)) as f:
    assert json.load(f)["kind"] == "full"
