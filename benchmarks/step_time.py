"""Training-step time of dense vs sparse execution (see fxsparse/bench.py for what is measured).

    python benchmarks/step_time.py --models vgg11_bn resnet20 --batch 64 --keep 0.5 --json step_time.json
"""
from fxsparse.bench import main

if __name__ == "__main__":
    main()
