"""Ray job entrypoint: the ``label6`` stage of a pipeline config.

    ray job submit --working-dir . -- python jobs/label6.py --config jobs/configs/demo.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("label6"))
