"""`python -m server` is `fitdeck`."""

import sys

from server.cli import main

sys.exit(main())
