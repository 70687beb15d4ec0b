"""`python -m dmlight.dashboard --project P [--entity E]`: the W&B dashboard of the papers' figures
(dmlight.tracking.dashboard builds it)."""
import sys

from dmlight.tracking.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
