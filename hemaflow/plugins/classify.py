"""Built-in classify components (work in progress)."""
