"""`python -m content_sync` is the `content-sync` command."""

import sys

from content_sync.cli import entry

sys.exit(entry())
