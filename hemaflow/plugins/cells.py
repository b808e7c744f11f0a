"""Built-in cells components (work in progress)."""
