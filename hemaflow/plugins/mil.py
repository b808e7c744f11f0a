"""Built-in mil components (work in progress)."""
