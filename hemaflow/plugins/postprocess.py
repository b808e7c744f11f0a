"""Built-in postprocess components (work in progress)."""
