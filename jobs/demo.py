"""Ray job entrypoint: the demo (synthetic volume → blockwise operations), as ``connectile demo``.

    ray job submit --working-dir . -- python jobs/demo.py --out /shared/runs/demo --shape 64,512,512

Inside a Ray job, RAY_ADDRESS is set, so the work runs on that cluster's workers.
"""

from __future__ import annotations

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
