"""``python -m pipelines`` runs the CLI."""

import sys

from pipelines.cli import main

sys.exit(main())
