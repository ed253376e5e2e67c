"""content-sync: keeps an OpenSearch index in step with an offset-based content feed."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
