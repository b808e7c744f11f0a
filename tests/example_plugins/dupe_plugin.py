"""A plugin that registers a component under a name a built-in already uses."""

from hemaflow import hookimpl
from hemaflow.plugins.executors import SerialExecutor


class AnotherSerial(SerialExecutor):
    """Same name as the built-in serial executor."""

    name = "serial"


@hookimpl
def register_executors(register):
    register(AnotherSerial)
