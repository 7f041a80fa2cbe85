"""Ray job entrypoint: every stage of a pipeline config, resumably.

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/tiny.yaml
"""

from __future__ import annotations

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main(None))
