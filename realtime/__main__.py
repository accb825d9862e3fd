"""`python -m realtime`: the studio, as `python app.py` and the `lightning-studio` console script start it."""

import sys

from .cli import main

sys.exit(main())
