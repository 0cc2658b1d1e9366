"""The tasks held-out evaluation supports, one file each, on the protocol of [`base.Task`]; registration order is
the order [`task_for`] tries them."""

from . import image, multi_label, qa, regression, text, token  # noqa: F401  (registers the tasks)
from .base import (TASKS, Columns, Prepared, Task, check_eval_data, register_task, settle_spec,
                   supported_architectures, task_for)

__all__ = ["TASKS", "Columns", "Prepared", "Task", "check_eval_data", "register_task", "settle_spec", "supported_architectures", "task_for"]
