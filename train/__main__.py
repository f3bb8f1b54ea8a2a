"""`python -m train`: the same as `dpc-train`."""

from .main import run

run()
