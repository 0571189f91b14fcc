#!/usr/bin/env python
"""EARL's suite runner: `python eval/earl_suite.py ARGS` is `earl eval earl-suite ARGS` (see --help).

--data is a directory with one folder per benchmark (omniedit, emuedit, aurora, magicbrush, vismin,
i2ebench), each holding an items.jsonl of {"id", "instruction", "source_image"} lines (see
eval/README.md). Example:
    python eval/earl_suite.py --data /data/earl-suite --model checkpoints/my-editor --out runs/earl_suite \\
        --judge-base-url http://judge:8000/v1
"""

import sys

from earl.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "earl-suite", *sys.argv[1:]]))
