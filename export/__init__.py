"""`dpc-export`: exports a trained codec as SavedModels for TF Serving
(see export/main.py, docs/train_export.md).

In the checkout this is the package `export` (`python -m export`); installed,
it is `dpc_export` with the console command `dpc-export`.
"""
