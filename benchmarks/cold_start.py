"""Moved into the library: ``fxsparse bench cold-start`` (fxsparse/bench_cold_start.py); this runs it."""
import sys

from fxsparse.cli import main

sys.exit(main(["bench", "cold-start", *sys.argv[1:]]))
