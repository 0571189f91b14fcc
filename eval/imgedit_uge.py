#!/usr/bin/env python
"""ImgEdit-Bench UGE ("Hard") runner: `python eval/imgedit_uge.py ARGS` is `earl eval imgedit-uge ARGS`.

The UGE judge prompt is the prompt string of the official `Benchmark/UGE/UGE_bench.py`; save it to a
text file and pass its path with --prompt. Example:
    python eval/imgedit_uge.py --edits /data/imgedit-meta/uge_edit.json \\
        --images /data/ImgEdit/Benchmark/hard --prompt uge_prompt.txt \\
        --model checkpoints/my-editor --out runs/imgedit_uge --judge-base-url http://judge:8000/v1
"""

import sys

from earl.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "imgedit-uge", *sys.argv[1:]]))
