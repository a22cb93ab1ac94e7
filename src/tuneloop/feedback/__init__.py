"""Human feedback: accounts, tasks, annotation, agreement and exports (the studio's core).

Everything the studio's pages do is a function here, so a notebook or a script can do it
too (and `tuneloop studio ...` commands do, through `tuneloop.api`):

    from tuneloop import feedback
    task = feedback.create_task("base-vs-tuned", "compare", ["eval:1", "eval:2"], overlap=2)
    feedback.export_task(task.id, "preference")
"""

from tuneloop.feedback.accounts import (
    ROLES,
    User,
    create_user,
    disable_user,
    ensure_admin,
    get_user,
    list_users,
    set_password,
    set_role,
    verify_login,
)
from tuneloop.feedback.audit import audit_log, log_event
from tuneloop.feedback.outcomes import (
    EXPORT_KINDS,
    FeedbackExport,
    disagreements,
    export_file,
    export_task,
    human_games,
    human_leaderboard,
    judge_task,
    resolve,
    task_agreement,
    task_exports,
)
from tuneloop.feedback.tasks import (
    KINDS,
    TaskInfo,
    create_task,
    get_task,
    list_tasks,
    recent_evals,
    set_status,
    visible_to,
)
from tuneloop.feedback.work import item_responses, item_view, next_item, save_response

__all__ = [
    "EXPORT_KINDS",
    "KINDS",
    "ROLES",
    "FeedbackExport",
    "TaskInfo",
    "User",
    "audit_log",
    "create_task",
    "create_user",
    "disable_user",
    "disagreements",
    "ensure_admin",
    "export_file",
    "export_task",
    "get_task",
    "get_user",
    "human_games",
    "human_leaderboard",
    "item_responses",
    "item_view",
    "judge_task",
    "list_tasks",
    "list_users",
    "log_event",
    "next_item",
    "recent_evals",
    "resolve",
    "save_response",
    "set_password",
    "set_role",
    "set_status",
    "task_agreement",
    "task_exports",
    "verify_login",
    "visible_to",
]
