"""``python -m streams`` runs the ``twin`` command line."""

import sys

from streams.cli import main

sys.exit(main())
