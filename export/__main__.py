"""`python -m export`: the same as `dpc-export`."""

from .main import run

run()
