"""A local, CTI-compatible feed for tests, demos and benchmarks (no internet needed).

`FeedModel` holds a deterministic history and knows the truth at any offset; `FeedServer` serves
it over HTTP on 127.0.0.1 with the wire contract of the Wazuh CTI API, plus a Command Manager
stand-in. Pytest fixtures live in `content_sync.testing.fixtures` (not imported here, so the
package does not need pytest at run time).
"""

from __future__ import annotations

from content_sync.testing.model import FeedModel, Snapshot
from content_sync.testing.server import FAULTS, FeedServer, RequestRecord

__all__ = ["FAULTS", "FeedModel", "FeedServer", "RequestRecord", "Snapshot"]
