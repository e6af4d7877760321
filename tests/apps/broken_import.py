"""An app whose module raises while being imported."""

raise RuntimeError("boom: cannot import this app")
