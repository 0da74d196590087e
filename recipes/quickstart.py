"""Quickstart: distilling step-by-step vs. standard finetuning on generated word problems.

    python recipes/quickstart.py            # about 4 minutes on 2 CPU cores
    python recipes/quickstart.py --steps 200
"""

import sys

from dss_keras.demo import main

if __name__ == "__main__":
    sys.exit(main())
