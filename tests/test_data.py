"""Training data pipelines: image files and TFDS, crops, bad images, sharding."""

import importlib
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dpc_tf import data
import support

# A manual-download TFDS builder, as a user's own dataset module would be: it
# reads PNG files from the manual directory (nothing is downloaded).
BUILDER_SOURCE = support.manual_photos_builder("DpcTestManualPhotos")


def solid(color, height, width):
  return np.full((height, width, 3), color, np.uint8)


def save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return str(path)


def test_list_image_files_expands_folders_globs_and_lists(tmp_path):
  a = save(tmp_path / "a" / "x.png", solid(1, 8, 8))
  b = save(tmp_path / "a" / "deep" / "y.JPG", solid(2, 8, 8))
  c = save(tmp_path / "b" / "z.png", solid(3, 8, 8))
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  assert data.list_image_files(str(tmp_path / "a")) == sorted([a, b])
  both = data.list_image_files(f"{tmp_path / 'a'}, {tmp_path / 'b' / '*.png'}")
  assert both == sorted([a, b, c])
  assert data.list_image_files([str(tmp_path / "b" / "z.png")]) == [c]
  with pytest.raises(data.DataError, match="matches no PNG/JPEG"):
    data.list_image_files(str(tmp_path / "nothing*.png"))


def test_scan_sorts_usable_unreadable_and_too_small_files(tmp_path):
  good = save(tmp_path / "good.png", solid(10, 40, 50))
  gray = save(tmp_path / "gray.jpg", np.full((48, 48), 7, np.uint8))
  small = save(tmp_path / "small.png", solid(10, 31, 100))
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  gif = save(tmp_path / "anim.png", solid(5, 40, 40), format="GIF")
  files = data.list_image_files(str(tmp_path))
  scan = data.scan_image_files(files, min_size=32)
  assert scan.usable == [good, gray]
  assert scan.too_small == [(small, (100, 31))]
  assert sorted(p for p, _ in scan.unreadable) == sorted([str(garbage), gif])
  assert "GIF" in dict(scan.unreadable)[gif]
  summary = scan.summary()
  assert (summary["usable"], summary["unreadable"], summary["too_small"]) == (2, 2, 1)
  with pytest.raises(data.DataError, match="None of the 4 files"):
    data.ImageFiles.from_patterns(str(tmp_path / "[gs]*"), min_size=64)


def test_crops_are_float_batches_cut_from_the_images(tmp_path):
  colors = (30, 120, 250)
  for i, color in enumerate(colors):
    save(tmp_path / f"{i}.png", solid(color, 40 + 10 * i, 64))
  source = data.ImageFiles.from_patterns(str(tmp_path), min_size=32)
  dataset = data.crops_dataset_fn(source, patch_size=32, global_batch_size=4,
                                  seed=0)(None)
  seen = set()
  for batch in dataset.take(6):
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == tf.float32
    for crop in batch.numpy():
      # Each crop is all one image's colour: cut from a decoded image.
      values = np.unique(np.round(crop * 255))
      assert len(values) == 1 and int(values[0]) in colors
      seen.add(int(values[0]))
  assert seen == set(colors)  # Shuffled over all files.


def test_too_small_and_corrupt_images_are_skipped_not_fatal(tmp_path):
  big = save(tmp_path / "big.png", solid(200, 64, 64))
  small = save(tmp_path / "small.png", solid(100, 16, 64))
  # A valid header with truncated pixel data: the scan cannot tell, the
  # decoder fails, and the pipeline drops it.
  corrupt = tmp_path / "corrupt.png"
  save(corrupt, np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8))
  corrupt.write_bytes(corrupt.read_bytes()[:200])
  assert data.scan_image_files([str(corrupt)], 32).usable == [str(corrupt)]
  counter = data.SkipCounter()
  source = data.ImageFiles([big, small, str(corrupt)])  # Unscanned on purpose.
  dataset = data.crops_dataset_fn(source, 32, 2, counter=counter, seed=1)(None)
  for batch in dataset.take(5):
    assert np.all(np.round(batch.numpy() * 255) == 200)
  counts = counter.result()
  assert counts["images_too_small"] > 0
  assert counts["images_read"] > counts["images_too_small"]


def test_files_are_sharded_over_input_pipelines(tmp_path):
  for i in range(4):
    save(tmp_path / f"{i}.png", solid(10 + 40 * i, 32, 32))
  source = data.ImageFiles(data.list_image_files(str(tmp_path)))

  def colours(index):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=index,
                                         num_replicas_in_sync=2)
    images = source.images(context).take(20)
    return {int(image[0, 0, 0]) for image in images}

  first, second = colours(0), colours(1)
  assert len(first) == 2 and len(second) == 2 and not first & second
  # Fewer files than pipelines: every pipeline reads all of them.
  lone = data.ImageFiles(source.files[:1])
  context = tf.distribute.InputContext(2, 1, 2)
  assert len(list(lone.images(context).take(3))) == 3


def test_per_replica_batch_size_comes_from_the_input_context(tmp_path):
  save(tmp_path / "a.png", solid(9, 32, 32))
  source = data.ImageFiles([str(tmp_path / "a.png")])
  dataset_fn = data.crops_dataset_fn(source, 16, global_batch_size=8)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=4)
  assert next(iter(dataset_fn(context))).shape == (2, 16, 16, 3)


def test_validation_dataset_fills_whole_batches():
  crops = [solid(i, 16, 16) for i in range(5)]
  dataset, steps = data.validation_dataset(crops, global_batch_size=4)
  batches = [b.numpy() for b in dataset]
  assert steps == 2 and len(batches) == 2
  firsts = [int(round(v * 255)) for b in batches for v in b[:, 0, 0, 0]]
  assert firsts == [0, 1, 2, 3, 4, 0, 1, 2]
  with pytest.raises(data.DataError):
    data.validation_dataset([], 4)


def test_read_validation_images_converts_to_rgb_and_reports_bad_files(tmp_path):
  save(tmp_path / "gray.png", np.full((20, 30), 5, np.uint8))
  save(tmp_path / "rgba.png", np.full((10, 10, 4), 9, np.uint8))
  (tmp_path / "bad.png").write_bytes(b"nope")
  images, skipped = data.read_validation_images(str(tmp_path))
  assert [im.shape for im in images] == [(20, 30, 3), (10, 10, 3)]
  assert [os.path.basename(p) for p, _ in skipped] == ["bad.png"]
  crops, too_small = data.validation_crops(images, 16)
  assert len(crops) == 1 and crops[0].shape == (16, 16, 3) and too_small == 1


# -- TFDS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A TFDS dataset stored in a temporary data_dir (no network)."""
  import tensorflow_datasets as tfds
  root = tmp_path_factory.mktemp("tfds")
  sizes = [(40, 48), (20, 64), (64, 40), (48, 48), (36, 36), (50, 33)]
  examples = [(i, {"image": solid(20 * (i + 1), h, w)})
              for i, (h, w) in enumerate(sizes)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name="dpc_test_stored_photos", version="1.0.0",
      features=tfds.features.FeaturesDict(
          {"image": tfds.features.Image(shape=(None, None, 3))}),
      split_datasets={"train": examples, "validation": examples[:2]},
      data_dir=str(root))
  return str(root)


def test_tfds_source_reads_crops_and_counts_small_images(tfds_dir):
  source = data.TFDSImages("dpc_test_stored_photos", split="train",
                           data_dir=tfds_dir)
  counter = data.SkipCounter()
  dataset = data.crops_dataset_fn(source, 36, 3, counter=counter, seed=0)(None)
  allowed = {20 * (i + 1) for i in (0, 2, 3, 4)}  # Those >= 36 px both ways.
  for batch in dataset.take(4):
    assert batch.shape == (3, 36, 36, 3)
    assert {int(v) for v in np.unique(np.round(batch.numpy() * 255))} <= allowed
  counts = counter.result()
  assert counts["images_too_small"] > 0  # The 20x64 and 50x33 images.
  assert len(source.first_images(10)) == 6


def test_tfds_source_shards_examples_over_pipelines(tfds_dir):
  source = data.TFDSImages("dpc_test_stored_photos", data_dir=tfds_dir)
  seen = []
  for index in range(2):
    context = tf.distribute.InputContext(2, index, 2)
    seen.append({int(im[0, 0, 0]) for im in source.images(context).take(30)})
  assert len(seen[0]) == 3 and len(seen[1]) == 3 and not seen[0] & seen[1]


def test_tfds_errors_name_the_problem(tfds_dir, tmp_path):
  with pytest.raises(data.DataError, match="no feature 'photo'"):
    data.TFDSImages("dpc_test_stored_photos", data_dir=tfds_dir,
                    image_key="photo")
  with pytest.raises(data.DataError, match="dpc_test_no_such_dataset"):
    data.TFDSImages("dpc_test_no_such_dataset", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="--tfds_prepare"):
    data.TFDSImages("dpc_test_stored_photos", data_dir=tfds_dir,
                    manual_dir=str(tmp_path))


@pytest.fixture(scope="module")
def manual_builder(tmp_path_factory):
  """Imports the manual-download builder module (registers it with TFDS)."""
  folder = tmp_path_factory.mktemp("builder")
  (folder / "dpc_test_manual_builder.py").write_text(BUILDER_SOURCE)
  sys.path.insert(0, str(folder))
  try:
    yield importlib.import_module("dpc_test_manual_builder")
  finally:
    sys.path.remove(str(folder))


def test_tfds_manual_dir_is_prepared_only_when_asked(manual_builder, tmp_path):
  del manual_builder
  manual = tmp_path / "manual"
  for split, count in (("train", 3), ("validation", 1)):
    for i in range(count):
      save(manual / split / f"{i}.png", solid(50 + i, 40, 40))
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(data.DataError, match="not prepared"):
    data.TFDSImages("dpc_test_manual_photos", data_dir=data_dir)
  source = data.TFDSImages("dpc_test_manual_photos", data_dir=data_dir,
                           prepare=True, manual_dir=str(manual))
  assert sorted(int(im[0, 0, 0]) for im in source.first_images(5)) == [50, 51, 52]
  # Prepared once, it is read without the manual directory.
  again = data.TFDSImages("dpc_test_manual_photos", split="validation",
                          data_dir=data_dir)
  assert len(again.first_images(5)) == 1
