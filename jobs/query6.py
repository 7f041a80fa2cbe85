"""Ray job entrypoint: the ``query6`` stage of a pipeline config.

    ray job submit --working-dir . -- python jobs/query6.py --config jobs/configs/demo.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("query6"))
