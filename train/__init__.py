"""`dpc-train`: trains a codec with `fit` (see train/main.py, docs/train_export.md).

In the checkout this is the package `train` (`python -m train`); installed, it
is `dpc_train` with the console command `dpc-train`.
"""
