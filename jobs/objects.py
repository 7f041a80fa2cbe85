"""Ray job entrypoint: the ``objects`` stage of a pipeline config.

    ray job submit --working-dir . -- python jobs/objects.py --config jobs/configs/tiny.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("objects"))
