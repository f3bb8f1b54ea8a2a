"""The README's examples run, top to bottom, on small data (tests/docs_check.py)."""

import os

import numpy as np
import pytest
from PIL import Image

import docs_check
import support

README = os.path.join(support.REPO, "README.md")


def readme_blocks():
  with open(README) as f:
    return docs_check.parse(f.read())


def test_every_example_is_run_or_says_why_not():
  blocks = readme_blocks()
  runnable = docs_check.substitute(blocks)  # Raises if a substitution went stale.
  assert {b.language for b in runnable} == {"python", "sh"}
  assert len(runnable) >= 8
  for block in blocks:
    if block.language in ("bash", "shell", "console", "py", "python3"):
      pytest.fail(f"README.md:{block.line}: fence the block as sh or python, so "
                  "the docs check runs it.")
  for block in runnable:
    # Examples are for users, who have their own files, not this project's.
    assert "../shared" not in block.code, f"README.md:{block.line}"


def test_parse_reads_markers_and_refuses_markers_without_a_reason():
  text = ("```sh\necho a\n```\n<!-- docs-check: skip: needs GPUs -->\n```python\n"
          "x = 1\n```\n")
  first, second = docs_check.parse(text)
  assert (first.language, first.code, first.skip) == ("sh", "echo a\n", None)
  assert (second.language, second.line, second.skip) == ("python", 5, "needs GPUs")
  with pytest.raises(ValueError, match="needs a reason"):
    docs_check.parse("<!-- docs-check: skip -->\n```sh\necho\n```\n")


def user_files(folder):
  """What a user of the README has: a photo, a folder of them, Kodak, LPIPS weights."""
  from skimage import data
  from perceptual import testing as lpips_testing
  save = lambda path, image: Image.fromarray(np.ascontiguousarray(image)).save(path)
  save(folder / "photo.png", data.astronaut()[100:196, 120:248])
  (folder / "my_photos").mkdir()
  for name in ("astronaut", "coffee", "chelsea", "rocket"):
    save(folder / "my_photos" / f"{name}.png", getattr(data, name)()[:128, :160])
  (folder / "kodak").mkdir()  # Stand-ins for two Kodak photos.
  save(folder / "kodak" / "kodim01.png", data.coffee()[200:296, 200:328])
  save(folder / "kodak" / "kodim02.png", data.chelsea()[50:146, 100:228])
  lpips_testing.write_seeded_weights_file(folder / "lpips_alex_v0.1.npz", "alex", seed=0)


@pytest.mark.slow
def test_the_readme_examples_run_top_to_bottom(tmp_path):
  user_files(tmp_path)
  original = (tmp_path / "photo.png").read_bytes()
  process = support.start_python(
      [os.path.join(support.REPO, "tests", "docs_check.py"), README, str(tmp_path)])
  code, output = support.finish(process, timeout=1500)
  assert code == 0, output[-6000:]
  assert "All " in output and " examples ran." in output
  # What the examples promise about the files they made.
  assert (tmp_path / "photo.png").read_bytes() == original
  assert (tmp_path / "photo.decoded.png").exists()
  assert sorted(os.listdir(tmp_path / "coded")) == [
      "astronaut.dpc", "chelsea.dpc", "coffee.dpc", "rocket.dpc"]
  assert not (tmp_path / "runs" / "hp_ms" / "backup").exists()
  assert (tmp_path / "results" / "kodak" / "summary.md").exists()
  import dpc_tf
  codec = dpc_tf.load_codec(tmp_path / "runs" / "hp_ms")
  assert codec.encode(dpc_tf.read_image(tmp_path / "photo.png")) == (
      tmp_path / "photo_served.dpc").read_bytes()
