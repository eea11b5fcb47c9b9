"""The job: groups of co-located tasks, kept at a count, run to completion or on every node.

* :mod:`cube.job.spec`: the job file a user writes, validated with field paths.
* :mod:`cube.job.model`: jobs, their versions and their allocations as Cube tracks them,
  and the allocation status table.
* :mod:`cube.job.reconcile`: the pure decision ``(job, version, allocations, nodes, now)
  -> plan``; :mod:`cube.job.plan`: the plan it returns, for an applier to carry out.
"""

from cube.job.eligibility import NodeView, datacenter_of, ineligibility
from cube.job.model import (
    ALLOC_TERMINAL,
    ALLOC_TRANSITIONS,
    Allocation,
    AllocDesired,
    AllocEvent,
    AllocStatus,
    AllocTask,
    IllegalAllocTransition,
    Job,
    JobStatus,
    JobVersion,
    RescheduleEvent,
    check_alloc_transition,
    group_hash,
    next_version,
    spec_hash,
)
from cube.job.parse import is_job_document, load_job_file, parse_job, parse_job_text
from cube.job.plan import InPlace, Keep, Place, Plan, Stop, Update, Wait
from cube.job.reconcile import reconcile
from cube.job.spec import (
    GroupSpec,
    JobSpec,
    JobType,
    ReschedulePolicy,
    group_resources,
    placement_spec,
)

__all__ = [
    "ALLOC_TERMINAL",
    "ALLOC_TRANSITIONS",
    "AllocDesired",
    "AllocEvent",
    "AllocStatus",
    "AllocTask",
    "Allocation",
    "GroupSpec",
    "IllegalAllocTransition",
    "InPlace",
    "Job",
    "JobSpec",
    "JobStatus",
    "JobType",
    "JobVersion",
    "Keep",
    "NodeView",
    "Place",
    "Plan",
    "RescheduleEvent",
    "ReschedulePolicy",
    "Stop",
    "Update",
    "Wait",
    "check_alloc_transition",
    "datacenter_of",
    "group_hash",
    "group_resources",
    "ineligibility",
    "is_job_document",
    "load_job_file",
    "next_version",
    "parse_job",
    "parse_job_text",
    "placement_spec",
    "reconcile",
    "spec_hash",
]
