"""Quickstart: distilling step-by-step vs. standard finetuning on generated word problems.

    python recipes/quickstart.py                 # about 2 minutes on 2 CPU cores
    python recipes/quickstart.py --steps 200 --seed 1

The same as `dss-keras quickstart` (which `make demo` runs); `--help` lists the flags.
"""

import sys

from dss_keras import cli

if __name__ == "__main__":
    sys.exit(cli.main(["quickstart", *sys.argv[1:]]))
