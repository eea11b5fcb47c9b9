"""The allocation runner: what the tasks of one job allocation share on this worker.

The manager sends an allocation's tasks one by one (each ``POST /v1/tasks`` with the same
``alloc``); each still has its own :class:`~cube.worker.runner.TaskRunner`. Above them,
one :class:`AllocRunner` per allocation owns the allocation's private network:

* created (idempotently) before any of its tasks' containers starts, and every container
  joins it with its task name as a DNS alias: ``proxy`` reaches ``http://api:8000/``;
* removed once none of its tasks can start a container here any more (each ended for good,
  was stopped, or was moved away by the manager), and never while one can;
* found again by its labels after a worker restart (:meth:`Allocations.adopt_networks`).

An allocation of a group of one task has no network (:attr:`AllocRef.shared
<cube.task.spec.AllocRef.shared>`): it has nobody to reach by name, and the engine's default
address pools allow only about 30 bridge networks, so a network each would stop a worker
at about 30 allocations. Its container stays on the engine's default bridge.

Every container of an allocation also gets ``CUBE_JOB``, ``CUBE_GROUP``,
``CUBE_ALLOC_INDEX``, ``CUBE_ALLOC_ID``, ``CUBE_TASK`` and ``CUBE_PORT_<container port>``
in its environment, and the allocation's labels. In an allocation every port a task
names is published: on the host port it pins, or else on one this worker chooses
(:mod:`cube.worker.ports`), so that the environment can say which.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from cube.errors import ContainerError, RuntimeUnavailable
from cube.log import get_logger
from cube.runtime.base import (
    LABEL_ALLOC_ID,
    LABEL_ALLOC_INDEX,
    LABEL_MANAGED_BY,
    LABEL_WORKER,
    MANAGED_BY,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntime,
    ProgressCallback,
    alloc_labels,
    worker_selector,
)
from cube.task.model import Task
from cube.task.spec import AllocRef, PortMapping
from cube.worker.container import Launch
from cube.worker.ports import PORT_ATTEMPTS, HostPorts, port_env, port_taken

log = get_logger("cube.worker")


def network_name(alloc_id: str, node: str) -> str:
    """Unique per engine, like a container's name: workers may share one engine."""
    return f"cube-alloc-{alloc_id[:12]}-{node}"


def network_labels(alloc: AllocRef, node: str) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_WORKER: node, **alloc_labels(alloc)}
    del labels[LABEL_ALLOC_INDEX]  # the network is the allocation's, whatever its index
    return labels


def alloc_env(alloc: AllocRef, task_name: str, ports: list[PortMapping]) -> dict[str, str]:
    """What a container of an allocation learns about its place in the job."""
    return {
        "CUBE_JOB": alloc.job,
        "CUBE_GROUP": alloc.group,
        "CUBE_ALLOC_INDEX": str(alloc.index),
        "CUBE_ALLOC_ID": alloc.id,
        "CUBE_TASK": task_name,
        **port_env(ports),
    }


def alloc_config(
    config: ContainerConfig,
    alloc: AllocRef,
    *,
    task_name: str,
    network: str | None,
    ports: list[PortMapping],
) -> ContainerConfig:
    """A task's container config as a member of ``alloc``, on ``network`` with ``ports``.

    Cube's variables win over the spec's own of the same name: a task cannot be told a
    wrong host port. A task on the host's network stack (or on none) stays there, without
    an alias; on the host's, its ports are the host's own. Without ``network`` (an
    allocation of one task) it stays on the engine's default one, without an alias.
    """
    labels = {**config.labels, **alloc_labels(alloc)}
    if not joins(config):
        own = [p.model_copy(update={"host": p.container}) for p in config.ports]
        env = alloc_env(alloc, task_name, own if config.network == "host" else [])
        return dataclasses.replace(config, env={**config.env, **env}, labels=labels)
    env = {**config.env, **alloc_env(alloc, task_name, ports)}
    if network is None:
        return dataclasses.replace(config, env=env, labels=labels, ports=ports)
    return dataclasses.replace(
        config, env=env, labels=labels, ports=ports, network=network, aliases=[task_name]
    )


def joins(config: ContainerConfig) -> bool:
    """Whether the container joins its allocation's network: unless it asked for the
    host's network stack, or for none."""
    return config.network not in ("host", "none")


class AllocRunner:
    """One allocation on this worker: its network, and which of its tasks are here.

    ``live`` tells whether a task may still start a container (the worker knows: its
    runner is at work). The network is only created and removed under one lock, and
    removed only when no member is live, so a task placed here while the network is
    being removed gets a new one before its container starts.
    """

    def __init__(
        self,
        alloc: AllocRef,
        *,
        node: str,
        runtime: ContainerRuntime,
        ports: HostPorts,
        live: Callable[[str], bool],
    ) -> None:
        self.alloc = alloc
        self.node = node
        self.network = network_name(alloc.id, node)
        self.runtime = runtime
        self._ports = ports
        self._live = live
        #: IDs of the allocation's tasks this worker was given.
        self.tasks: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def live(self) -> bool:
        """Whether any of its tasks may still start a container on the network here."""
        return any(self._live(task_id) for task_id in self.tasks)

    async def ensure_network(self) -> None:
        if not self.alloc.shared:
            return
        async with self._lock:
            await self.runtime.ensure_network(
                self.network, labels=network_labels(self.alloc, self.node)
            )

    async def release(self) -> bool:
        """Remove the network unless a task still needs it; True if it is gone.

        Raises what the engine raises (RuntimeUnavailable, ContainerError): the caller
        tries again later.
        """
        async with self._lock:
            if self.live:
                return False
            if not self.alloc.shared:
                return True
            await self.runtime.remove_network(self.network)
        log.info("allocation network removed", alloc=self.alloc.id, network=self.network)
        return True

    def launcher(self, task: Task) -> Launch:
        """How ``task``'s runner starts its container: on the network, with its ports."""

        async def launch(
            config: ContainerConfig, on_progress: ProgressCallback | None
        ) -> ContainerInfo:
            if not joins(config):
                return await self.runtime.run(
                    alloc_config(
                        config, self.alloc, task_name=task.name, network=self.network, ports=[]
                    ),
                    on_progress=on_progress,
                )
            await self.ensure_network()
            network = self.network if self.alloc.shared else None
            pinned = {p.host for p in config.ports if p.host}
            failed: set[int] = set()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                ports = self._ports.choose(config.ports, previous=task.ports, avoid=failed)
                member = alloc_config(
                    config, self.alloc, task_name=task.name, network=network, ports=ports
                )
                try:
                    return await self.runtime.run(member, on_progress=on_progress)
                except ContainerError as exc:
                    taken = port_taken(exc)
                    if taken is None or taken in pinned or attempt == PORT_ATTEMPTS:
                        raise
                    log.info(
                        "host port taken between its choice and the start, choosing again",
                        task=task.id,
                        port=taken,
                    )
                    failed.add(taken)
                finally:
                    self._ports.release(ports)
            raise ContainerError(f"no host ports for task {task.name}")  # not reached

        return launch


class Allocations:
    """The allocations of this worker's tasks: one runner each, while a task may need it.

    ``live`` (from the worker) tells whether a task's runner is at work.
    """

    def __init__(
        self,
        *,
        node: str,
        runtime: ContainerRuntime,
        ports: HostPorts,
        live: Callable[[str], bool],
    ) -> None:
        self.node = node
        self.runtime = runtime
        self.ports = ports
        self._live = live
        self._runners: dict[str, AllocRunner] = {}
        #: Allocations whose network could not be removed yet: tried again on each pass.
        self._unreleased: set[str] = set()

    def join(self, task_id: str, alloc: AllocRef) -> AllocRunner:
        """The runner of ``alloc``, with ``task_id`` among its tasks."""
        runner = self._runners.get(alloc.id)
        if runner is None:
            runner = AllocRunner(
                alloc, node=self.node, runtime=self.runtime, ports=self.ports, live=self._live
            )
            self._runners[alloc.id] = runner
        runner.tasks.add(task_id)
        return runner

    async def release(self, alloc_id: str) -> None:
        """Remove the allocation's network if none of its tasks runs here any more; if the
        engine will not, :meth:`retry_releases` tries again."""
        runner = self._runners.get(alloc_id)
        if runner is None:
            return
        self._unreleased.discard(alloc_id)
        try:
            gone = await runner.release()
        except (RuntimeUnavailable, ContainerError) as exc:
            log.warning(
                "allocation network not removed yet, will retry",
                alloc=alloc_id,
                network=runner.network,
                error=exc.message,
            )
            self._unreleased.add(alloc_id)
            return
        # A task placed here meanwhile keeps the entry: its start makes the network again.
        if gone and not runner.live and self._runners.get(alloc_id) is runner:
            del self._runners[alloc_id]

    async def retry_releases(self) -> None:
        for alloc_id in list(self._unreleased):
            await self.release(alloc_id)

    async def adopt_networks(self) -> None:
        """After a (re)start: keep the networks of allocations with a task at work here,
        remove this worker's others (left by a crash between an allocation's last task
        ending and its network's removal, or by tasks that ended while it was away).

        Only networks labelled with this worker's name: other workers on the same engine
        own theirs.
        """
        for network in await self.runtime.networks(worker_selector(self.node)):
            alloc_id = network.labels.get(LABEL_ALLOC_ID)
            if alloc_id is None:
                continue
            runner = self._runners.get(alloc_id)
            if runner is None or runner.network != network.name:
                log.info("removing orphaned allocation network", network=network.name)
                try:
                    await self.runtime.remove_network(network.name)
                except ContainerError as exc:  # something not Cube's joined it: leave it be
                    log.warning("orphaned network kept", network=network.name, error=exc.message)
            elif runner.live:
                log.info("adopted allocation network", alloc=alloc_id, network=network.name)
            else:
                await self.release(alloc_id)
