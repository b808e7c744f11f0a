"""Built-in components, one module per stage, registered like any third-party plugin."""

DEFAULT_PLUGINS = [
    "hemaflow.plugins.artifacts",
    "hemaflow.plugins.executors",
    "hemaflow.plugins.datasets",
    "hemaflow.plugins.splits",
    "hemaflow.plugins.normalize",
    "hemaflow.plugins.segment",
    "hemaflow.plugins.postprocess",
    "hemaflow.plugins.cells",
    "hemaflow.plugins.instances",
    "hemaflow.plugins.features",
    "hemaflow.plugins.pretrain",
    "hemaflow.plugins.classify.images",
    "hemaflow.plugins.classify.tabular",
    "hemaflow.plugins.classify.multimodal",
    "hemaflow.plugins.classify.apply",
    "hemaflow.plugins.mil",
    "hemaflow.plugins.evaluate",
    "hemaflow.plugins.report",
    "hemaflow.plugins.tracking",
]
