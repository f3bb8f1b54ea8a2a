"""The user's files: outputs never destroy data, one notion of a model path."""

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dpc_tf
from dpc_tf import cli, files, training
from dpc_tf.evaluation import cli as eval_cli
import support


@pytest.fixture
def photo_png(tmp_path):
  from skimage import data
  path = tmp_path / "photo.png"
  Image.fromarray(np.ascontiguousarray(data.astronaut()[:40, :56])).save(path)
  return path


@pytest.fixture
def model(saved_models):
  return str(saved_models["factorized"])


@pytest.fixture
def umask():
  """Sets the process umask for a test, and restores it."""
  old = os.umask(0o022)
  yield os.umask
  os.umask(old)


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def run(capsys, *args):
  code = cli.main([str(a) for a in args])
  captured = capsys.readouterr()
  return code, captured.out + captured.err


# -- Outputs that could lose data ----------------------------------------------


def test_decompress_never_overwrites_the_original(model, photo_png, capsys):
  original = photo_png.read_bytes()
  assert run(capsys, "compress", "-m", model, photo_png)[0] == 0
  coded = photo_png.with_suffix(".dpc")
  code, out = run(capsys, "decompress", "-m", model, coded)
  assert code == 0, out
  decoded = photo_png.parent / "photo.decoded.png"
  assert f"-> {decoded}" in out
  assert np.asarray(Image.open(decoded)).shape == (40, 56, 3)
  assert photo_png.read_bytes() == original
  # --force never replaces an input of the same command.
  code, out = run(capsys, "decompress", "-m", model, coded, "-o", coded, "--force")
  assert code == 2 and "is an input of this command" in out
  code, out = run(capsys, "compress", "-m", model, photo_png, "-o", photo_png,
                  "--force")
  assert code == 2 and "never overwritten, even with --force" in out
  assert photo_png.read_bytes() == original
  assert np.asarray(Image.open(coded.parent / "photo.decoded.png")).shape == (40, 56, 3)


def test_two_inputs_with_one_output_are_refused_before_any_work(
    model, photo_png, tmp_path, capsys):
  for folder in ("s1", "s2"):
    os.makedirs(tmp_path / folder)
    shutil.copy(photo_png, tmp_path / folder / "x.png")
  out_dir = tmp_path / "o"
  code, out = run(capsys, "compress", "-m", model, tmp_path / "s1" / "x.png",
                  tmp_path / "s2" / "x.png", "--out-dir", out_dir, "--force")
  assert code == 2
  assert f"s1{os.sep}x.png and " in out and f"s2{os.sep}x.png would both be written to" in out
  assert not out_dir.exists()  # Refused before anything was made.
  # The same file twice is one output twice, too.
  code, out = run(capsys, "compress", "-m", model, photo_png, photo_png, "--out-dir",
                  out_dir)
  assert code == 2 and "would both be written" in out


def test_an_existing_output_is_refused_before_the_image_is_coded(
    model, photo_png, capsys, monkeypatch):
  photo_png.with_suffix(".dpc").write_bytes(b"keep me")
  calls = []
  monkeypatch.setattr(dpc_tf.Codec, "encode", lambda self, image: calls.append(1))
  code, out = run(capsys, "compress", "-m", model, photo_png)
  assert code == 1 and "photo.dpc exists; pass --force" in out
  assert not calls
  assert photo_png.with_suffix(".dpc").read_bytes() == b"keep me"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_get_the_permissions_of_the_umask(model, photo_png, tmp_path, capsys,
                                                   tiny_models, umask, mask):
  umask(mask)
  out = tmp_path / "o"
  assert run(capsys, "compress", "-m", model, photo_png, "--out-dir", out)[0] == 0
  assert mode(out / "photo.dpc") == 0o666 & ~mask
  assert run(capsys, "decompress", "-m", model, out / "photo.dpc")[0] == 0
  assert mode(out / "photo.decoded.png") == 0o666 & ~mask
  dpc_tf.save_model(tiny_models["factorized"], tmp_path / "m")
  assert mode(tmp_path / "m") == 0o777 & ~mask
  assert {mode(p) for p in (tmp_path / "m").iterdir()} == {0o666 & ~mask}
  # Replacing a file keeps its permissions, as writing into it would.
  os.chmod(out / "photo.dpc", 0o600)
  assert run(capsys, "compress", "-m", model, photo_png, "--out-dir", out,
             "--force")[0] == 0
  assert mode(out / "photo.dpc") == 0o600


def test_bad_output_paths_get_clear_errors_naming_them(model, photo_png, tmp_path,
                                                       capsys):
  folder = tmp_path / "folder"
  folder.mkdir()
  code, out = run(capsys, "compress", "-m", model, photo_png, "-o", folder)
  assert code == 2 and f"-o {folder} is a directory" in out
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  code, out = run(capsys, "compress", "-m", model, photo_png, "--out-dir", a_file)
  assert code == 2 and f"--out-dir {a_file} is a file" in out
  missing = tmp_path / "missing" / "x.dpc"
  code, out = run(capsys, "compress", "-m", model, photo_png, "-o", missing)
  assert code == 2 and f"the folder {missing.parent} does not exist" in out
  for _, message in [run(capsys, "compress", "-m", model, photo_png, "-o", p)
                     for p in (folder, missing)]:
    assert ".tmp" not in message and "Errno" not in message
  # The library says the same, naming the user's path, not a temporary file.
  with pytest.raises(FileNotFoundError, match=f"folder {missing.parent} does not"):
    files.write_atomic(missing, lambda f: f.write(b"x"))
  with pytest.raises(IsADirectoryError, match=f"{folder} is a directory"):
    files.write_atomic(folder, lambda f: f.write(b"x"), overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder", "photo.png"]


# -- One notion of a model path -------------------------------------------------


@pytest.fixture
def run_dir(tiny_models, tmp_path):
  """A dpc-train output directory, as the program leaves it."""
  run = tmp_path / "run"
  dpc_tf.save_model(tiny_models["factorized"], run / "model")
  (run / "flags.txt").write_text("--arch=factorized\n")
  return run


def test_a_run_directory_is_accepted_wherever_a_model_is(run_dir, photo_png,
                                                        tmp_path, capsys):
  assert files.resolve_model(run_dir) == ("model", str(run_dir / "model"))
  assert dpc_tf.load_model(run_dir).architecture == "factorized"
  assert dpc_tf.saving.read_model_info(run_dir)["architecture"] == "factorized"
  codec = dpc_tf.load_codec(run_dir)
  code, out = run(capsys, "compress", "-m", run_dir, photo_png)
  assert code == 0, out
  data = photo_png.with_suffix(".dpc").read_bytes()
  assert codec.decode(data).shape == (40, 56, 3)
  code, out = run(capsys, "info", run_dir)
  assert code == 0 and f"{run_dir} (a dpc-train run: {run_dir / 'model'})" in out
  assert "architecture: factorized" in out
  eval_cli.build_codecs("none", [], [f"learned={run_dir}"])


def test_a_missing_model_path_does_not_exist(tmp_path, photo_png, capsys):
  missing = tmp_path / "nowhere"
  for verb in ("compress", "decompress"):
    code, out = run(capsys, verb, "-m", missing, photo_png)
    assert code == 2 and f"Model {missing} does not exist." in out
  code, out = run(capsys, "info", missing)
  assert code == 1 and f"{missing}: does not exist." in out
  for load in (dpc_tf.load_codec, dpc_tf.load_model):
    with pytest.raises(dpc_tf.ModelFileError, match="does not exist"):
      load(missing)
  assert eval_cli.run(eval_cli.add_arguments(__import__("argparse").ArgumentParser())
                      .parse_args([str(photo_png), "--out", str(tmp_path / "e"),
                                   "--codecs", "none", "--model", f"m={missing}"])) == 2
  assert "does not exist" in capsys.readouterr().err
  assert not (tmp_path / "e").exists()


def test_an_unfinished_run_and_a_saved_model_where_a_model_dir_is_needed(tmp_path):
  unfinished = tmp_path / "run"
  (unfinished / "backup").mkdir(parents=True)
  with pytest.raises(dpc_tf.ModelFileError, match="run without a finished model"):
    files.resolve_model(unfinished)
  served = tmp_path / "served" / "1"
  served.mkdir(parents=True)
  (served / "saved_model.pb").write_bytes(b"")
  assert files.resolve_model(served.parent) == ("saved_model", str(served.parent))
  with pytest.raises(dpc_tf.ModelFileError, match="is an exported SavedModel"):
    dpc_tf.load_model(served.parent)
  with pytest.raises(dpc_tf.ModelFileError, match="is a file"):
    files.resolve_model(served / "saved_model.pb")


# -- What the README says -------------------------------------------------------


def test_gray_images_get_psnr_and_msssim(model, tmp_path, capsys):
  from skimage import data
  gray = tmp_path / "gray.png"
  Image.fromarray(data.camera()[:48, :64]).save(gray)
  code, out = run(capsys, "compress", "-m", model, gray, "--metrics")
  assert code == 0 and "PSNR" in out and "MS-SSIM" in out


def test_submodules_are_attributes_of_the_package_after_import_dpc_tf():
  code = ("import dpc_tf; print(dpc_tf.serving.export.__name__, "
          "dpc_tf.data.crops_dataset_fn.__name__, dpc_tf.training.train.__name__)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=support.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
  assert result.stdout.split() == ["export", "crops_dataset_fn", "train"], result.stderr


def test_an_emptied_backup_folder_is_removed_and_anything_else_kept(tmp_path):
  emptied = tmp_path / "backup"
  (emptied / "chief").mkdir(parents=True)
  training._remove_empty_tree(str(emptied))
  assert not emptied.exists()
  kept = tmp_path / "kept"
  (kept / "chief").mkdir(parents=True)
  (kept / "chief" / "checkpoint").write_text("x")
  training._remove_empty_tree(str(kept))
  assert (kept / "chief" / "checkpoint").exists()


def test_dpc_export_takes_the_same_model_paths(tmp_path):
  # The program's own process: absl flags are global to a process.
  missing = tmp_path / "nowhere"
  process = support.start_python(["-m", "export", f"--model_dir={missing}",
                                  f"--export_dir={tmp_path / 'serving'}"])
  code, output = support.finish(process, timeout=300)
  assert code == 1 and f"dpc-export: error: Model {missing} does not exist." in output
  assert not (tmp_path / "serving").exists()
