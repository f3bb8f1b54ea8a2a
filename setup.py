"""dpc-tf: Deep Perceptual Compression in TensorFlow/Keras.

Runtime requirements are in requirements/base.txt and their pinned versions in
requirements/constraints.txt (install with `pip install -c requirements/constraints.txt -e .`,
which is what `make` does).
"""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (HERE / "requirements" / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="dpc-tf",
    version="0.1.0",
    description="Deep Perceptual Compression: learned image codecs trained on "
                "LPIPS + MS-SSIM, on TensorFlow Compression.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    # `train/` and `export/` are thin programs in the checkout; installed, they
    # get names of their own instead of generic top-level `train`/`export`.
    packages=(setuptools.find_packages(include=["dpc_tf", "dpc_tf.*", "perceptual", "perceptual.*"])
              + ["dpc_train", "dpc_export"]),
    package_dir={"dpc_train": "train", "dpc_export": "export"},
    install_requires=_requirements("base.txt"),
    extras_require={
        "eval": _requirements("eval.txt"),
        "test": _requirements("test.txt"),
        "study": _requirements("study.txt"),
    },
    # The model zoo and the study app's page (HTML, CSS, JS) ship inside the package.
    package_data={"dpc_tf.zoo": ["models/*/*.json", "models/*/*.npz", "models/*/*.md"],
                  "dpc_tf.study": ["web/*"]},
    entry_points={
        "console_scripts": [
            "dpc=dpc_tf.cli:main",
            "dpc-train=dpc_train.main:run",
            "dpc-export=dpc_export.main:run",
        ],
    },
)
