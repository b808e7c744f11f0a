"""Built-in tracking components (work in progress)."""
