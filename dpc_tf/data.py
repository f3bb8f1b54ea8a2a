"""Training data: `tf.data` pipelines of random crops, from image files or TFDS.

    source = data.ImageFiles.from_patterns("photos/,extra/*.jpg", min_size=256)
    # or: source = data.TFDSImages("clic", split="train", data_dir="~/tfds")
    counter = data.SkipCounter()
    dataset_fn = data.crops_dataset_fn(source, patch_size=256,
                                       global_batch_size=8, counter=counter)
    model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), ...)

Pipelines yield float32 [batch, patch, patch, 3] batches in [0, 1], forever
(shuffled, repeated, prefetched). They are built per input pipeline from a
`tf.distribute.InputContext`, so under tf.distribute every worker reads its
own share of the files instead of decoding everything and keeping 1/N.

Bad images never stop a run:
- image files are scanned before training (headers only, fast): unreadable
  files, formats other than PNG/JPEG, and images smaller than the patch are
  left out and counted (`FileScan`);
- a file whose header is fine but whose data is corrupt fails to decode in the
  pipeline; `tf.data` drops it and logs a warning (not counted: tf.data gives
  no hook to count dropped elements);
- decoded images smaller than the patch (the only check possible for TFDS
  sources, whose sizes are not known without decoding) are dropped and
  counted in `SkipCounter`'s variables, once per time they are read.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# What tf.io.decode_image reads and we accept from a scan (Pillow's names).
_DECODABLE_FORMATS = ("PNG", "JPEG")
_SHUFFLE_CROPS = 256  # Crops held in the shuffle buffer.


class DataError(ValueError):
  """A data source that cannot give any training image."""


# -- Image files ---------------------------------------------------------------


def list_image_files(patterns):
  """Expands folders and globs into a sorted list of PNG/JPEG files.

  Args:
    patterns: a string of comma-separated entries, or a list of them. An entry
      is a folder (searched recursively), a glob (`photos/*.png`,
      `gs://bucket/clic/*/*.png`) or a file. Paths go through `tf.io.gfile`,
      so cloud storage works where TensorFlow's file systems do.

  Raises:
    DataError: if an entry matches nothing, or nothing is a PNG/JPEG file.
  """
  if isinstance(patterns, str):
    patterns = [patterns]
  entries = [e.strip() for p in patterns for e in str(p).split(",") if e.strip()]
  if not entries:
    raise DataError("No image files given: pass folders or globs of PNG/JPEG "
                    "images (e.g. --train_glob='photos/*.png').")
  files = set()
  for entry in entries:
    entry = os.path.expanduser(entry)
    if tf.io.gfile.isdir(entry):
      found = [os.path.join(root, name)
               for root, _, names in tf.io.gfile.walk(entry) for name in names]
    else:
      found = tf.io.gfile.glob(entry)
    images = [f for f in found if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
      raise DataError(f"{entry!r} matches no PNG/JPEG file "
                      f"({len(found)} other files).")
    files.update(images)
  return sorted(files)


@dataclasses.dataclass
class FileScan:
  """What a header scan of image files found.

  Attributes:
    usable: files to train on.
    unreadable: [(path, reason)] of files that are not readable PNG/JPEG.
    too_small: [(path, (width, height))] of images smaller than the patch.
  """
  usable: list
  unreadable: list
  too_small: list

  def summary(self):
    """A dict for logs and run summaries (counts plus a few examples)."""
    return dict(usable=len(self.usable), unreadable=len(self.unreadable),
                too_small=len(self.too_small),
                unreadable_examples=[f"{p}: {r}" for p, r in self.unreadable[:10]],
                too_small_examples=[f"{p}: {w}x{h}" for p, (w, h)
                                    in self.too_small[:10]])


def _image_header(path):
  """(format, (width, height)) from the file's header, or raises."""
  from PIL import Image
  with tf.io.gfile.GFile(path, "rb") as f:
    with Image.open(f) as image:
      return image.format, image.size


def scan_image_files(files, min_size, num_threads=8):
  """Reads each file's header; sorts files into usable, unreadable, too small.

  Only headers are read (no decoding), so scanning thousands of files takes
  seconds. `min_size` is the patch size: both sides must be at least that.
  """
  def check(path):
    try:
      fmt, size = _image_header(path)
    except Exception as e:  # Any failure means: cannot train on this file.
      return path, "unreadable", f"{type(e).__name__}: {e}".splitlines()[0]
    if fmt not in _DECODABLE_FORMATS:
      return path, "unreadable", f"{fmt} image; only PNG and JPEG are read"
    if min(size) < min_size:
      return path, "too_small", size
    return path, "usable", size

  scan = FileScan([], [], [])
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for path, kind, info in pool.map(check, files):
      if kind == "usable":
        scan.usable.append(path)
      elif kind == "too_small":
        scan.too_small.append((path, info))
      else:
        scan.unreadable.append((path, info))
  return scan


class SkipCounter:
  """Counts images a pipeline reads, and drops for being smaller than the patch.

  The counts are `tf.Variable`s updated by the pipeline; build the counter
  outside any `strategy.scope()` so they stay plain host variables. With
  `repeat()`, an image is counted each time it is read.
  """

  def __init__(self):
    with tf.init_scope():
      self.read = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name="images_read")
      self.too_small = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name="images_too_small")

  def result(self):
    return dict(images_read=int(self.read.numpy()),
                images_too_small=int(self.too_small.numpy()))


class ImageFiles:
  """Training images from PNG/JPEG files.

  Args:
    files: paths of PNG/JPEG files (see `list_image_files`).
    scan: the `FileScan` that produced `files`, if any (for reports).
  """

  def __init__(self, files, scan=None):
    if not files:
      raise DataError("No usable training images.")
    self.files = list(files)
    self.scan = scan

  @classmethod
  def from_patterns(cls, patterns, min_size):
    """Lists and scans files; raises `DataError` if none is usable."""
    scan = scan_image_files(list_image_files(patterns), min_size)
    if not scan.usable:
      raise DataError(
          f"None of the {len(scan.unreadable) + len(scan.too_small)} files in "
          f"{patterns!r} is usable: {len(scan.unreadable)} unreadable, "
          f"{len(scan.too_small)} smaller than {min_size} px.")
    return cls(scan.usable, scan)

  def describe(self):
    return f"{len(self.files)} image files"

  def images(self, input_context=None, seed=None):
    """Infinite dataset of uint8 [H, W, 3] images, in shuffled order."""
    files = self.files
    num_pipelines, index = _pipeline(input_context)
    if num_pipelines > 1 and len(files) >= num_pipelines:
      # Each worker reads its own files. With fewer files than workers, all
      # read all of them (their random crops still differ).
      files = files[index::num_pipelines]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    dataset = dataset.map(decode_image_file, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=False)
    # Corrupt data behind a good header: dropped, with a logged warning.
    return dataset.ignore_errors(log_warning=True)


def decode_image_file(path):
  """Path -> uint8 [H, W, 3] (gray is repeated, alpha dropped)."""
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


# -- TFDS ------------------------------------------------------------------------


class TFDSImages:
  """Training images from a TensorFlow Datasets builder (e.g. "clic").

  Args:
    name: the builder's name, optionally with config and version
      ("clic", "my_photos:1.0.0").
    split: the split to read ("train", "validation", "train[:90%]").
    data_dir: where prepared datasets live (TFDS' default if None).
    image_key: the feature holding the image.
    prepare: if True, call `download_and_prepare` first (downloads unless the
      builder reads `manual_dir`); otherwise the dataset must be prepared.
    manual_dir: folder with the files of a manual-download builder.
  """

  def __init__(self, name, split="train", data_dir=None, image_key="image",
               prepare=False, manual_dir=None):
    import tensorflow_datasets as tfds
    self.name = name
    self.split = split
    self.image_key = image_key
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several kinds for unknown names.
      raise DataError(f"TFDS has no dataset {name!r} (data_dir={data_dir}): "
                      f"{str(e).splitlines()[0]}") from None
    if prepare:
      config = None
      if manual_dir:
        config = tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(manual_dir))
      self.builder.download_and_prepare(download_config=config)
    elif manual_dir:
      raise DataError("A TFDS manual_dir is only read when preparing the "
                      "dataset: also pass --tfds_prepare.")
    if not self.builder.is_prepared():
      raise DataError(
          f"TFDS dataset {name!r} is not prepared in "
          f"{self.builder.data_dir}. Prepare it once with --tfds_prepare (and "
          "--tfds_manual_dir for manual downloads), or with `tfds build`.")
    if image_key not in self.builder.info.features:
      raise DataError(f"TFDS dataset {name!r} has no feature {image_key!r}; "
                      f"it has {', '.join(self.builder.info.features)}.")

  def describe(self):
    return f"TFDS {self.name} split {self.split!r}"

  def _read(self, input_context=None, seed=None, shuffle=True):
    import tensorflow_datasets as tfds
    num_pipelines, index = _pipeline(input_context)
    try:
      num_shards = self.builder.info.splits[self.split].num_shards
    except (KeyError, ValueError):
      num_shards = 0  # A sliced split ("train[:90%]"): shard the elements.
    by_file = num_pipelines > 1 and num_shards >= num_pipelines
    read_config = tfds.ReadConfig(
        input_context=input_context if by_file else None,
        shuffle_seed=seed)
    dataset = self.builder.as_dataset(split=self.split, shuffle_files=shuffle,
                                      read_config=read_config)
    if num_pipelines > 1 and not by_file:
      dataset = dataset.shard(num_pipelines, index)
    key = self.image_key
    return dataset.map(lambda example: _to_rgb(example[key]))

  def images(self, input_context=None, seed=None):
    """Infinite dataset of uint8 [H, W, 3] images, in shuffled order."""
    dataset = self._read(input_context, seed).repeat()
    # Shuffle examples too: TFDS shuffles files, not the examples inside them.
    return dataset.shuffle(64, seed=seed).prefetch(tf.data.AUTOTUNE)

  def first_images(self, count):
    """The first `count` images of the split, as uint8 numpy arrays."""
    return [image.numpy() for image in
            self._read(shuffle=False).take(count)]


def _to_rgb(image):
  image = tf.convert_to_tensor(image)
  if image.shape.rank != 3:
    raise DataError(f"Expected [H, W, C] images, got shape {image.shape}.")
  channels = image.shape[-1]
  if channels == 1:
    image = tf.repeat(image, 3, axis=-1)
  elif channels == 4:
    image = image[..., :3]
  elif channels != 3:
    raise DataError(f"Expected images with 1, 3 or 4 channels, got {channels}.")
  if image.dtype != tf.uint8:
    raise DataError(f"Expected uint8 images, got {image.dtype.name}.")
  return image


def _pipeline(input_context):
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


# -- Crops -----------------------------------------------------------------------


def random_crops(images, patch_size, batch_size, counter=None, crops_per_image=1,
                 seed=None):
  """Images -> shuffled float32 batches of random patch_size crops in [0, 1].

  Args:
    images: dataset of uint8 [H, W, 3] images (any size).
    patch_size: side of the square crops.
    batch_size: images per batch (per replica, under tf.distribute).
    counter: a `SkipCounter` that counts images read and images dropped for
      being smaller than the patch; None to drop them uncounted.
    crops_per_image: crops taken from each decoded image (decoding a large
      PNG costs more than a training step of a small model).
    seed: seed of the random crops and shuffles.
  """

  def big_enough(image):
    shape = tf.shape(image)
    keep = tf.logical_and(shape[0] >= patch_size, shape[1] >= patch_size)
    if counter is None:
      return keep
    with tf.control_dependencies([
        counter.read.assign_add(1),
        counter.too_small.assign_add(tf.cast(tf.logical_not(keep), tf.int64))]):
      return tf.identity(keep)

  def crops(image):
    return tf.stack([
        tf.image.random_crop(image, [patch_size, patch_size, 3],
                             seed=None if seed is None else seed + i)
        for i in range(crops_per_image)])

  dataset = images.filter(big_enough)
  dataset = dataset.map(crops, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=False).unbatch()
  dataset = dataset.shuffle(max(_SHUFFLE_CROPS, 4 * batch_size), seed=seed)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(lambda x: tf.cast(x, tf.float32) / 255.0,
                        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE)


def crops_dataset_fn(source, patch_size, global_batch_size, counter=None,
                     crops_per_image=1, seed=None):
  """A `dataset_fn(input_context)` for `DatasetCreator` or
  `strategy.distribute_datasets_from_function`: each input pipeline reads its
  share of `source` and batches at the per-replica batch size."""

  def dataset_fn(input_context=None):
    batch_size = global_batch_size
    if input_context is not None:
      batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    worker_seed = None if seed is None else seed + 1000 * _pipeline(input_context)[1]
    return random_crops(source.images(input_context, worker_seed), patch_size,
                        batch_size, counter=counter,
                        crops_per_image=crops_per_image, seed=worker_seed)

  return dataset_fn


# -- Sample photos -------------------------------------------------------------

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def write_sample_photos(folder, names=SAMPLE_PHOTOS):
  """Writes photos bundled with scikit-image as PNG files; returns their paths.

  A small real training set for demos, tests and benchmarks (no download):
  `--train_glob=<folder>` then trains on them.
  """
  try:
    import skimage.data  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError("Sample photos come from scikit-image: pip install "
                    "scikit-image (pip install -c requirements/constraints.txt "
                    "-e '.[test]').") from None
  from dpc_tf import images as image_io  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name in names:
    path = os.path.join(folder, f"{name}.png")
    image_io.write_image(path, getattr(skimage.data, name)(), overwrite=True)
    paths.append(path)
  return paths


# -- Validation ------------------------------------------------------------------


def center_crop(image, size):
  """Central size x size crop of an [H, W, C] numpy image (size <= both sides)."""
  height, width = image.shape[:2]
  top, left = (height - size) // 2, (width - size) // 2
  return image[top:top + size, left:left + size]


def read_validation_images(patterns, max_images=None):
  """Validation images from files as uint8 RGB arrays, and the skipped files.

  Returns:
    (images, skipped): images in sorted file order (at most `max_images`),
    and [(path, reason)] of files that could not be read.
  """
  from dpc_tf import images as image_io
  images, skipped = [], []
  for path in list_image_files(patterns):
    if max_images is not None and len(images) >= max_images:
      break
    try:
      # Alpha dropped, as `decode_image_file` does to training images.
      images.append(image_io.read_image(path, alpha="drop"))
    except image_io.ImageError as e:
      skipped.append((path, str(e)))
  return images, skipped


def validation_crops(images, patch_size):
  """Central patch_size crops of the images at least that large, and a count
  of those that are smaller (skipped)."""
  crops = [center_crop(image, patch_size) for image in images
           if min(image.shape[:2]) >= patch_size]
  return crops, len(images) - len(crops)


def validation_dataset(crops, global_batch_size):
  """A finite dataset of whole global batches of validation crops, and its steps.

  The crops are cycled to fill the last batch, so every step sees a full
  batch (tf.distribute splits whole batches evenly over replicas).
  """
  if not crops:
    raise DataError("No validation image is as large as the patch.")
  steps = -(-len(crops) // global_batch_size)
  dataset = tf.data.Dataset.from_tensor_slices(np.stack(crops))
  dataset = dataset.repeat().take(steps * global_batch_size)
  dataset = dataset.batch(global_batch_size, drop_remainder=True)
  dataset = dataset.map(lambda x: tf.cast(x, tf.float32) / 255.0)
  options = tf.data.Options()
  # Workers split each batch (the data is in memory, there are no files).
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options), steps
