#!/usr/bin/env python
"""GEdit-Bench runner: `python eval/gedit.py ARGS` is `earl eval gedit ARGS` (see --help).

Example, judged by a vLLM server with Qwen2.5-VL-72B:
    python eval/gedit.py --data /data/GEdit-Bench --prompts /data/gedit-prompts \\
        --model checkpoints/my-editor --out runs/gedit --judge-base-url http://judge:8000/v1
"""

import sys

from earl.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "gedit", *sys.argv[1:]]))
