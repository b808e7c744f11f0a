"""A plugin whose hook implementation matches no hookspec (a typo)."""

from hemaflow import hookimpl


@hookimpl
def register_normalisers(register):  # British spelling: not a hemaflow hook
    pass
