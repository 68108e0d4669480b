"""Tasks (``task=detect``, ``task=anomaly``): the interface (``base``), the light checks run before anything heavy
is imported (``checks``) and one implementation module per task, imported on first :func:`get_task`."""

from fgkd.tasks.base import ROLES, TASK_MODULES, Task, UnknownTaskError, get_task, list_tasks, register_task

__all__ = ["ROLES", "TASK_MODULES", "Task", "UnknownTaskError", "get_task", "list_tasks", "register_task"]
