"""The messages the manager and its workers exchange.

They belong to neither agent: the manager sends and reads them through
:mod:`cube.manager.workers`, a worker answers them in :mod:`cube.worker.api`, and both
import them from here (as Nomad's agents share ``structs``). A node's report of itself
(:class:`cube.node.NodeReport`) and a task's record (:class:`cube.task.model.Task`) are
domain types that these messages carry.
"""

from __future__ import annotations

from pydantic import BaseModel

from cube.task.model import Task, TaskEvent

#: The longest a blocking query may wait (the manager's waits stay under it). A stopping
#: worker answers its queries at once (ChangeFeed.close), so a long wait does not hold
#: its shutdown up.
MAX_WAIT = 60.0


class TaskChanges(BaseModel):
    """A worker's answer to a blocking query (``GET /v1/changes``)."""

    #: Where the next query starts (``?since=``).
    index: str
    #: Whether ``tasks`` is every task of the node, or only those changed since the query's.
    complete: bool
    tasks: list[Task]
    #: Each listed task's history, as ``GET /v1/tasks/{id}/events`` would give it: read with
    #: the task, so the two agree, and no call per task to ask for it.
    events: dict[str, list[TaskEvent]]
