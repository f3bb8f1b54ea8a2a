"""The `dpc` command on real files."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dpc_tf import cli


def dpc(*args, check=True):
  """Runs `dpc` in a subprocess, as a user would."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-m", "dpc_tf.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
  if check and result.returncode:
    raise AssertionError(f"dpc {args} failed ({result.returncode}):\n{result.stderr}")
  return result


@pytest.fixture
def pngs(tmp_path):
  from skimage import data
  paths = []
  for name, image in [("astronaut", data.astronaut()[:40, :60]),
                      ("coffee", data.coffee()[:33, :17]),
                      ("camera", data.camera()[:20, :30])]:  # Gray.
    path = tmp_path / f"{name}.png"
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    paths.append(path)
  return paths


@pytest.mark.slow
def test_compress_decompress_info_in_one_session(saved_models, pngs, tmp_path):
  model = saved_models["hyperprior"]
  out = tmp_path / "coded"
  result = dpc("compress", "-m", model, *pngs, "--out-dir", out, "--metrics")
  assert "bpp" in result.stdout and "PSNR" in result.stdout
  assert "3 of 3 files done" in result.stderr
  coded = sorted(out.glob("*.dpc"))
  assert [p.name for p in coded] == ["astronaut.dpc", "camera.dpc", "coffee.dpc"]

  info = dpc("info", coded[0], model).stdout
  assert "hyperprior/" in info and "40" in info and "60x40" in info
  assert "num_filters=8" in info

  decoded = tmp_path / "decoded"
  dpc("decompress", "-m", model, *coded, "--out-dir", decoded)
  for original in pngs:
    image = np.asarray(Image.open(decoded / f"{original.stem}.decoded.png"))
    assert image.shape == np.asarray(Image.open(original)).shape

  # Never overwrite without being asked; with --force, do.
  result = dpc("decompress", "-m", model, coded[0], "-o", decoded / "astronaut.decoded.png",
               check=False)
  assert result.returncode == 1 and "exists" in result.stderr
  dpc("decompress", "-m", model, coded[0], "-o", decoded / "astronaut.decoded.png", "--force")


def test_bad_inputs_are_reported_and_the_rest_still_done(saved_models, pngs,
                                                          tmp_path, capsys):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image at all")
  deep = tmp_path / "deep.png"
  Image.new("I;16", (8, 8)).save(deep)
  code = cli.main(["compress", "-m", str(saved_models["factorized"]),
                   str(bad), str(pngs[0]), str(deep), "--out-dir", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert code == 1
  assert "bad.png: not a readable image" in err
  assert re.search(r"deep\.png: .*16-bit.* not supported", err)
  assert "1 of 3 files done, 2 failed" in err
  assert (tmp_path / "o" / "astronaut.dpc").exists()
  assert not (tmp_path / "o" / "bad.dpc").exists()


def test_decompress_errors_name_the_problem(saved_models, pngs, tmp_path, capsys):
  model = str(saved_models["factorized"])
  assert cli.main(["compress", "-m", model, str(pngs[1]), "-o",
                   str(tmp_path / "c.dpc")]) == 0
  data = (tmp_path / "c.dpc").read_bytes()
  (tmp_path / "cut.dpc").write_bytes(data[:-7])
  (tmp_path / "png.dpc").write_bytes(pngs[1].read_bytes())
  code = cli.main(["decompress", "-m", str(saved_models["hyperprior"]),
                   str(tmp_path / "c.dpc"), str(tmp_path / "cut.dpc"),
                   str(tmp_path / "png.dpc"), "--out-dir", str(tmp_path / "d")])
  err = capsys.readouterr().err
  assert code == 1
  assert "c.dpc: The bitstream was made by model factorized/" in err
  assert "cut.dpc: Truncated or corrupt" in err
  assert "png.dpc: Not a dpc bitstream" in err
  assert not list((tmp_path / "d").glob("*.png"))


def test_usage_errors(pngs, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("DPC_MODEL", raising=False)
  assert cli.main(["compress", "-m", str(tmp_path), str(pngs[0])]) == 2
  assert "not a dpc_tf model directory" in capsys.readouterr().err
  assert cli.main(["compress", "-m", str(tmp_path), "-o", "x.dpc",
                   str(pngs[0]), str(pngs[1])]) == 2
  assert "--out-dir" in capsys.readouterr().err


def test_models_lists_architectures(capsys):
  assert cli.main(["models"]) == 0
  out = capsys.readouterr().out
  for name in ["factorized", "hyperprior", "mean_scale_hyperprior", "channelwise"]:
    assert name in out


def test_info_on_a_bitstream_does_not_import_tensorflow(tmp_path):
  """The README's promise: `dpc info file.dpc` answers without TensorFlow."""
  from dpc_tf import container
  header = container.Header("hyperprior", b"abcd", b"01234567", 40, 60, 3)
  path = tmp_path / "x.dpc"
  path.write_bytes(container.pack(container.Bitstream(header, (b"z" * 5, b"y" * 99))))
  script = ("import sys\n"
            "from dpc_tf import cli\n"
            "code = cli.main(['info', sys.argv[1]])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_compression', 'keras'))\n"
            "print('LOADED', loaded)\n"
            "sys.exit(code)\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", script, str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "60x40 RGB" in result.stdout and "strings: 5, 99" in result.stdout
  assert "LOADED []" in result.stdout


def test_without_a_model_the_zoo_codes_and_decodes(pngs, tmp_path, capsys,
                                                     monkeypatch, saved_models):
  from dpc_tf import container, zoo
  monkeypatch.delenv("DPC_MODEL", raising=False)
  coded = tmp_path / "zoo.dpc"
  assert cli.main(["compress", str(pngs[0]), "-o", str(coded), "--quality", "2"]) == 0
  header = container.unpack(coded.read_bytes()).header
  assert header.fingerprint.hex() == zoo.model_card("dpc")["fingerprint"]
  assert header.quality == 2.0
  capsys.readouterr()
  # The decoder is the zoo model the header names.
  assert cli.main(["decompress", str(coded), "-o", str(tmp_path / "zoo.png"),
                   "--in-process"]) == 0
  assert (tmp_path / "zoo.png").exists()
  # A stream of a model outside the zoo needs -m.
  other = tmp_path / "other.dpc"
  assert cli.main(["compress", "-m", str(saved_models["factorized"]),
                   str(pngs[0]), "-o", str(other)]) == 0
  capsys.readouterr()
  assert cli.main(["decompress", str(other), "-o", str(tmp_path / "o.png"),
                   "--in-process"]) == 1
  assert "not in the zoo" in capsys.readouterr().err
  # Qualities outside the range, or for a fixed-rate model, are usage errors.
  assert cli.main(["compress", str(pngs[0]), "-o", str(tmp_path / "q.dpc"),
                   "--quality", "9"]) == 2
  assert "[1, 6]" in capsys.readouterr().err
  assert cli.main(["compress", "-m", str(saved_models["factorized"]), str(pngs[0]),
                   "-o", str(tmp_path / "f.dpc"), "--quality", "2"]) == 2
  assert "fixed-rate" in capsys.readouterr().err
