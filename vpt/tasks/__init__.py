"""Task types (classification, detection): data, model, loss and metrics for the training loop."""
from .base import TASKS, Task, get_task, limited, metric_setting, recorded_task, register_task, task_from_config

__all__ = ["TASKS", "Task", "get_task", "limited", "metric_setting", "recorded_task", "register_task",
           "task_from_config"]
