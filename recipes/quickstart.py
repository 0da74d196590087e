"""Quickstart: distilling step-by-step vs. standard finetuning on generated word problems.

    python recipes/quickstart.py                 # about 2 minutes on 2 CPU cores
    python recipes/quickstart.py --steps 200 --seed 1

The same as `dss-keras quickstart` (which `make demo` runs); `--help` lists the flags.
Both runs go to `runs/quickstart/seed-<seed>/<mode>/`, the served model to
`saved_models/quickstart/<version>/`.
"""

import sys

from dss_keras import cli, quickstart


def get_config():
    """The quickstart's settings (a tiny T5 from scratch, 1,200 steps of batch 32)."""
    return quickstart.get_config()


if __name__ == "__main__":
    sys.exit(cli.main(["quickstart", *sys.argv[1:]]))
