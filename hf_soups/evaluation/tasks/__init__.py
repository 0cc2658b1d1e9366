"""The tasks held-out evaluation supports, one file each, on the protocol of [`base.Task`]; registration order is
the order [`task_for`] tries them. `heads` adds the heads only the card knows, last."""

from . import image, multi_label, qa, regression, text, token  # noqa: F401  (registers the tasks)
from . import heads  # noqa: F401, I001  (registered after the evaluated tasks)
from .base import (TASKS, Columns, Prepared, Task, check_eval_data, head_for, register_task, settle_spec,
                   supported_architectures, task_for, usage_code)

__all__ = ["TASKS", "Columns", "Prepared", "Task", "check_eval_data", "head_for", "register_task", "settle_spec",
           "supported_architectures", "task_for", "usage_code"]
