"""Ray job entrypoint: the ``review5`` stage of a pipeline config.

    ray job submit --working-dir . -- python jobs/review5.py --config jobs/configs/demo.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("review5"))
