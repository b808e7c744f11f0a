"""Built-in report components (work in progress)."""
