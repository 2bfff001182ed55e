"""``python -m vpt.tools.bench``: the same as ``vpt-bench`` (spawned workers start this way too)."""
import sys

from .cli import main

sys.exit(main())
