"""``python -m dlqnb.bench``: the benchmarks and the zoo check."""

import sys

from dlqnb.bench.benchmarks import main

if __name__ == "__main__":
    sys.exit(main())
