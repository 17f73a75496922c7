"""Image-op benchmark: `python benchmarks/bench_augment.py` (= `cnnkit bench augment`)."""
import sys

from cnnkit.bench.augment import main

if __name__ == "__main__":
    sys.exit(main())
