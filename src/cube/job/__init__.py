"""The job: groups of co-located tasks, kept at a count, run to completion or on every node.

* :mod:`cube.job.spec`: the job file a user writes, validated with field paths.
* :mod:`cube.job.model`: jobs, their versions and their allocations as Cube tracks them.
* :mod:`cube.job.reconcile`: the pure decision ``(job, version, allocations, nodes, now)
  -> plan`` that the manager applies.
"""
