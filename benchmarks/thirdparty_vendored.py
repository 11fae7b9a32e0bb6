"""The third-party style models vendored in ``tests/thirdparty`` (torchvision and timm coding
styles, scaled down) through the pipeline of ``benchmarks/thirdparty_transformers.py``:
analyze -> export at two keep-0.5 masks -> forward/backward -> equality with the masked
reference -> a sparse step; FLOPs at keep 0.5.

    OMP_NUM_THREADS=1 python benchmarks/thirdparty_vendored.py [name ...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from thirdparty import MODELS  # noqa: E402
from thirdparty_transformers import report  # noqa: E402

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or sorted(MODELS)
    report({name: MODELS[name] for name in names}, verbose="-v" in sys.argv)
