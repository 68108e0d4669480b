"""Tasks (``task=detect``, ``task=anomaly``): each a new module beside ``detect.py`` registering itself with ``@register_task``."""

from fgkd.tasks import anomaly, detect  # noqa: F401 - register the tasks
from fgkd.tasks.base import ROLES, Task, UnknownTaskError, get_task, list_tasks, register_task

__all__ = ["ROLES", "Task", "UnknownTaskError", "get_task", "list_tasks", "register_task"]
