"""Moved: the ``instance_encoder`` component to :mod:`hemaflow.plugins.encoders`, its
pre-training and embedding functions to :mod:`hemaflow.lib.encoder_training`; this old path
re-exports both (it registers nothing)."""

from hemaflow.lib.backbones import create_backbone  # noqa: F401
from hemaflow.lib.encoder_training import *  # noqa: F401,F403
from hemaflow.lib.encoder_training import _collate  # noqa: F401
from hemaflow.plugins.encoders import COMPONENTS, FROZEN_UNUSED, InstanceEncoder  # noqa: F401
