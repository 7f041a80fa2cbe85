"""Ray job entrypoint: the ``ingest`` stage of a pipeline config.

    ray job submit --working-dir . -- python jobs/ingest.py --config jobs/configs/lucchi.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("ingest"))
