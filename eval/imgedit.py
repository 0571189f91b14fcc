#!/usr/bin/env python
"""ImgEdit-Bench (Basic) runner: `python eval/imgedit.py ARGS` is `earl eval imgedit ARGS` (see --help).

Example:
    python eval/imgedit.py --edits /data/imgedit-meta/basic_edit.json \\
        --images /data/ImgEdit/Benchmark/singleturn --prompts /data/imgedit-meta/prompts.json \\
        --model checkpoints/my-editor --out runs/imgedit --judge-base-url http://judge:8000/v1
"""

import sys

from earl.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "imgedit", *sys.argv[1:]]))
