"""Workflow configs: one validated model, whatever schema the file was written in."""

from modelpress.config.normalize import load_config, normalize
from modelpress.config.schema import WorkflowConfig

__all__ = ["WorkflowConfig", "load_config", "normalize"]
