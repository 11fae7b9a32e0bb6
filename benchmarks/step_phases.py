"""Moved into the library: ``fxsparse bench phases`` (fxsparse/bench_phases.py); this runs it."""
import sys

from fxsparse.cli import main

sys.exit(main(["bench", "phases", *sys.argv[1:]]))
