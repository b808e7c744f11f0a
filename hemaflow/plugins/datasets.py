"""Built-in datasets components (work in progress)."""
