"""`python -m earl.cli` (what `torchrun` and `accelerate launch` run): the `earl` command."""

import sys

from earl.cli import main

sys.exit(main())
