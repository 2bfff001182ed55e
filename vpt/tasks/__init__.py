"""Task types (classification, detection): data, model, loss and metrics for the training loop."""
from .base import Task, get_task, limited, register_task

__all__ = ["Task", "get_task", "limited", "register_task"]
