"""``python -m portattn``: the command line."""

from __future__ import annotations

import sys

from portattn.cli import main

sys.exit(main())
