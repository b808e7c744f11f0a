"""Example third-party hemaflow plugin: a classical Otsu + watershed white-cell segmenter."""
