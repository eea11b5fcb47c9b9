"""Scheduler throughput at scale: placements per second and what one decision costs.

In-process and pure logic, like the manager's dispatch loop without the I/O: a
simulated cluster of ``cube.node.Node`` models with varied capacities, labels and a
few draining/down nodes, and a stream of task specs with varied resources, some
with label constraints or a fixed host port. For every algorithm and node count it
places the tasks one by one, recording each placement with ``allocate()`` before
the next (as the manager does), then

* checks every placement was feasible: the node was ready, met the constraints,
  had the host port free, and no node ends above its capacity;
* reports placements per second (wall clock and per CPU-second of this process:
  the machine may be shared, and CPU time is what one core delivered), the median
  over chunks, and the microseconds one ``place()`` call took;
* reports the quality of the result: for spreading algorithms how even the CPU and
  memory utilisation is (coefficient of variation across ready nodes), for
  bin-pack how few nodes were used and how full they are.

Task sizes are scaled so that, whatever the node count and number of placements,
the cluster ends about ``--fill`` (75 %) allocated on its tighter resource, so
runs at different sizes are equally hard.

A second, short measurement times decisions with no candidate limit (every node
scored) to show how the cost of one decision grows with the node count when the
limit is off.

    python bench/scheduler.py                        # the default: about 5-10 minutes
    python bench/scheduler.py --placements 20000 --nodes 1000,5000 --json out.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ints, machine, median, output_arguments, save_figure, save_json, table

from cube.node import Node, NodeState, Resources
from cube.scheduler import ALGORITHMS, DEFAULT_CANDIDATE_LIMIT, LIEB, allocate, make_scheduler
from cube.task.spec import TaskSpec

GiB = 1024**3
MiB = 1024**2
CPU_EPSILON = 1e-9

#: The brief's target: placements per second at 5,000 nodes for these algorithms.
TARGET_RATE = 4000.0
TARGET_NODES = 5000
TARGET_ALGORITHMS = ("epvm", "bin-pack")

ZONES = ("a", "b", "c")
HOST_PORTS = tuple(range(8000, 8020))


# --- the simulated cluster and workload -----------------------------------------------------------
def build_nodes(count: int, rng: random.Random) -> list[Node]:
    """``count`` nodes named in order, from 4 to 64 cores with 2-8 GiB per core; 1 % draining,
    1 % down, spread over three zones, half with SSDs."""
    nodes = []
    for i in range(count):
        cpu = rng.choice((4, 8, 16, 32, 64))
        roll = rng.random()
        state = (
            NodeState.DRAINING
            if roll < 0.01
            else NodeState.DOWN
            if roll < 0.02
            else NodeState.READY
        )
        nodes.append(
            Node(
                name=f"node-{i:05d}",
                address=f"http://10.0.{i // 250}.{i % 250}:5556",
                state=state,
                capacity=Resources(
                    cpu=float(cpu),
                    memory=cpu * rng.choice((2, 4, 8)) * GiB,
                    disk=rng.choice((100, 250, 500)) * GiB,
                ),
                labels={"zone": ZONES[i % 3], "disk": "ssd" if rng.random() < 0.5 else "hdd"},
            )
        )
    return nodes


@dataclass(frozen=True)
class Shape:
    """A task's resources before scaling, and its placement constraints."""

    cpu: float
    memory: int
    disk: int
    constraints: dict[str, str]
    port: int | None


def task_shapes(count: int, rng: random.Random) -> list[Shape]:
    """A varied mix: mostly small, a few large; 10 % pinned to a zone, 5 % to SSD nodes,
    2 % publishing a fixed host port, 20 % asking for disk."""
    shapes = []
    for _ in range(count):
        cpu = rng.choices((0.1, 0.25, 0.5, 1.0, 2.0), weights=(30, 30, 20, 15, 5))[0]
        memory = int(cpu * rng.choice((1, 2, 4)) * GiB)
        roll = rng.random()
        constraints = (
            {"zone": rng.choice(ZONES)} if roll < 0.10 else {"disk": "ssd"} if roll < 0.15 else {}
        )
        port = rng.choice(HOST_PORTS) if rng.random() < 0.02 else None
        disk = GiB if rng.random() < 0.2 else 0
        shapes.append(Shape(cpu, memory, disk, constraints, port))
    return shapes


def scaled_specs(
    shapes: Sequence[Shape], nodes: Sequence[Node], placements: int, fill: float
) -> list[TaskSpec]:
    """Specs from ``shapes`` scaled so that ``placements`` of them fill the ready nodes'
    tighter resource to about ``fill`` (by expectation over a uniform draw)."""
    ready = [n for n in nodes if n.state is NodeState.READY]
    total_cpu = sum(n.capacity.cpu for n in ready)
    total_memory = sum(n.capacity.memory for n in ready)
    mean_cpu = statistics.fmean(s.cpu for s in shapes)
    mean_memory = statistics.fmean(s.memory for s in shapes)
    scale = fill * min(
        total_cpu / (placements * mean_cpu), total_memory / (placements * mean_memory)
    )
    specs = []
    for i, s in enumerate(shapes):
        specs.append(
            TaskSpec(
                name=f"task-{i}",
                image="busybox:latest",
                resources={
                    "cpu": max(0.01, round(s.cpu * scale, 3)),
                    "memory": max(6 * MiB, int(s.memory * scale) // MiB * MiB),
                    "disk": s.disk,
                },
                constraints=s.constraints,
                ports=[f"{s.port}:80"] if s.port else [],
            )
        )
    return specs


# --- one run: an algorithm over a cluster ---------------------------------------------------------
@dataclass
class Chunk:
    placements: int
    wall: float
    cpu: float
    place: float  # seconds inside Scheduler.place (wall clock)


@dataclass
class Run:
    algorithm: str
    nodes: int
    limit: int | None
    placements: int
    placed: int = 0
    examined: int = 0
    candidates: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    first_unplaced: str = ""

    def summary(self) -> dict[str, Any]:
        wall = sum(c.wall for c in self.chunks)
        cpu = sum(c.cpu for c in self.chunks)
        place = sum(c.place for c in self.chunks)
        n = self.placements
        return {
            "algorithm": self.algorithm,
            "nodes": self.nodes,
            "limit": self.limit,
            "placements": n,
            "placed": self.placed,
            "rate_wall": n / wall,
            "rate_cpu": n / cpu,
            "rate_cpu_median_chunk": median([c.placements / c.cpu for c in self.chunks if c.cpu]),
            "us_per_placement_cpu": cpu / n * 1e6,
            "us_per_decision": median([c.place / c.placements * 1e6 for c in self.chunks]),
            "decision_share": place / wall,
            "examined_per_decision": self.examined / n,
            "rejected_per_decision": (self.examined - self.candidates) / n,
            "violations": len(self.violations),
            "first_unplaced": self.first_unplaced,
            **self.quality,
        }


def run(
    algorithm: str,
    cluster: Sequence[Node],
    specs: Sequence[TaskSpec],
    order: Sequence[int],
    *,
    limit: int | None,
    chunks: int,
) -> Run:
    nodes = list(cluster)
    index = {n.name: i for i, n in enumerate(nodes)}
    scheduler = make_scheduler(algorithm, candidate_limit=limit)
    result = Run(algorithm, len(nodes), scheduler.candidate_limit, len(order))
    where = [-1] * len(order)
    size = -(-len(order) // chunks)
    perf, cpu_clock = time.perf_counter, time.process_time
    for start in range(0, len(order), size):
        stop = min(start + size, len(order))
        in_place = 0.0
        wall0, cpu0 = perf(), cpu_clock()
        for k in range(start, stop):
            spec = specs[order[k]]
            t = perf()
            decision = scheduler.place(spec, nodes)
            in_place += perf() - t
            result.examined += decision.examined
            result.candidates += decision.candidates
            if decision.node is None:
                if not result.first_unplaced:
                    result.first_unplaced = decision.reason
                continue
            i = index[decision.node]
            nodes[i] = allocate(nodes[i], spec)
            where[k] = i
        result.chunks.append(Chunk(stop - start, perf() - wall0, cpu_clock() - cpu0, in_place))
    result.placed = sum(1 for i in where if i >= 0)
    result.violations = verify(cluster, nodes, specs, order, where)
    result.quality = quality(nodes)
    return result


def verify(
    cluster: Sequence[Node],
    final: Sequence[Node],
    specs: Sequence[TaskSpec],
    order: Sequence[int],
    where: Sequence[int],
) -> list[str]:
    """Replay every placement from the empty cluster; return what was infeasible."""
    problems: list[str] = []
    cpu = [0.0] * len(cluster)
    memory = [0] * len(cluster)
    disk = [0] * len(cluster)
    ports: list[set[int]] = [set() for _ in cluster]
    for k, i in enumerate(where):
        if i < 0:
            continue
        node, spec = cluster[i], specs[order[k]]
        if node.state is not NodeState.READY:
            problems.append(f"placement {k}: {node.name} is {node.state.value}")
        if any(node.labels.get(key) != value for key, value in spec.constraints.items()):
            problems.append(f"placement {k}: {node.name} lacks labels {spec.constraints}")
        for p in spec.ports:
            if p.host:
                if p.host in ports[i]:
                    problems.append(f"placement {k}: host port {p.host} taken on {node.name}")
                ports[i].add(p.host)
        r = spec.resources
        cpu[i] += r.cpu
        memory[i] += r.memory
        disk[i] += r.disk
    for i, node in enumerate(cluster):
        cap = node.capacity
        if cpu[i] > cap.cpu + CPU_EPSILON or memory[i] > cap.memory or disk[i] > cap.disk:
            problems.append(f"{node.name} over capacity: {cpu[i]:.2f} CPU, {memory[i]} B memory")
        have = final[i].allocated
        if abs(have.cpu - cpu[i]) > 1e-6 or have.memory != memory[i] or have.disk != disk[i]:
            problems.append(f"{node.name}: allocate() bookkeeping differs from the replay")
    return problems


def quality(nodes: Sequence[Node]) -> dict[str, float]:
    """How evenly (CV, max) or how tightly (nodes used, their fill) the ready nodes are used."""
    ready = [n for n in nodes if n.state is NodeState.READY]
    cpu = [n.allocated.cpu / n.capacity.cpu for n in ready]
    memory = [n.allocated.memory / n.capacity.memory for n in ready]
    used = [i for i, n in enumerate(ready) if n.tasks > 0]
    return {
        "cpu_util_mean": statistics.fmean(cpu),
        "cpu_util_cv": _cv(cpu),
        "cpu_util_max": max(cpu),
        "memory_util_cv": _cv(memory),
        "memory_util_max": max(memory),
        "nodes_used": len(used) / len(ready),
        "used_cpu_util": statistics.fmean(cpu[i] for i in used) if used else 0.0,
        "used_memory_util": statistics.fmean(memory[i] for i in used) if used else 0.0,
        # E-PVM's own objective, which each of its placements greedily keeps low: the sum
        # over nodes and resources of LIEB ** utilisation (here per node, lower is better).
        "epvm_cost": statistics.fmean(LIEB**c + LIEB**m for c, m in zip(cpu, memory, strict=True)),
    }


def _cv(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean else 0.0


def exhaustive_cost(
    algorithm: str, cluster: Sequence[Node], specs: Sequence[TaskSpec], samples: int
) -> float:
    """Median microseconds per decision with no candidate limit (every node examined)."""
    nodes = list(cluster)
    index = {n.name: i for i, n in enumerate(nodes)}
    scheduler = make_scheduler(algorithm, candidate_limit=None)
    times = []
    for k in range(samples):
        spec = specs[k % len(specs)]
        t = time.perf_counter()
        decision = scheduler.place(spec, nodes)
        times.append(time.perf_counter() - t)
        if decision.node is not None:
            i = index[decision.node]
            nodes[i] = allocate(nodes[i], spec)
    return median(times) * 1e6


# --- output ---------------------------------------------------------------------------------------
COLUMNS = [
    ("algorithm", "algorithm"),
    ("nodes", "nodes"),
    ("limit", "limit"),
    ("placed", "placed"),
    ("rate_wall", "placements/s (wall)"),
    ("rate_cpu", "placements/CPU-s"),
    ("rate_cpu_median_chunk", "median chunk /CPU-s"),
    ("us_per_decision", "µs/decision"),
    ("us_exhaustive", "µs/decision, no limit"),
    ("examined_per_decision", "examined"),
    ("rejected_per_decision", "rejected"),
    ("cpu_util_mean", "CPU util"),
    ("cpu_util_cv", "CPU CV"),
    ("memory_util_cv", "mem CV"),
    ("cpu_util_max", "max CPU util"),
    ("epvm_cost", "E-PVM cost"),
    ("nodes_used", "nodes used"),
    ("used_cpu_util", "CPU util of used"),
    ("violations", "infeasible"),
]


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    counts = sorted({r["nodes"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for algorithm in algorithms:
        mine = sorted((r for r in rows if r["algorithm"] == algorithm), key=lambda r: r["nodes"])
        xs = [r["nodes"] for r in mine]
        (line,) = left.plot(xs, [r["us_per_decision"] for r in mine], marker="o", label=algorithm)
        ex = [(r["nodes"], r["us_exhaustive"]) for r in mine if r.get("us_exhaustive")]
        if ex:
            left.plot(*zip(*ex, strict=True), marker="x", linestyle="--", color=line.get_color())
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("nodes")
    left.set_ylabel("µs per decision (median)")
    limits = sorted({r["limit"] for r in rows if r["algorithm"] != "round-robin"})
    shown = "/".join(str(x) for x in limits)
    left.set_title(f"Cost of one decision: limit {shown} (solid) vs every node (dashed)")
    left.legend()
    width = 0.8 / len(algorithms)
    for j, algorithm in enumerate(algorithms):
        rates = [
            next(
                (r["rate_cpu"] for r in rows if r["algorithm"] == algorithm and r["nodes"] == c), 0
            )
            for c in counts
        ]
        right.bar([i + j * width for i in range(len(counts))], rates, width, label=algorithm)
    right.axhline(TARGET_RATE, color="black", linestyle=":", label=f"target {TARGET_RATE:,.0f}/s")
    right.set_xticks([i + width * (len(algorithms) - 1) / 2 for i in range(len(counts))])
    right.set_xticklabels([f"{c:,} nodes" for c in counts])
    right.set_ylabel("placements per CPU-second (incl. allocate)")
    right.set_title("Throughput, one core")
    right.legend(fontsize="small")
    save_figure(fig, path)


# --- main -----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=ints, default=[1000, 5000, 10000], help="node counts")
    parser.add_argument("--placements", type=int, default=100_000, help="placements per run")
    parser.add_argument(
        "--algorithms", default=",".join(ALGORITHMS), help="comma-separated algorithm names"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_CANDIDATE_LIMIT,
        help="candidate limit (0: none); round-robin always uses 1",
    )
    parser.add_argument("--fill", type=float, default=0.75, help="how full the cluster ends")
    parser.add_argument("--chunks", type=int, default=10, help="timing chunks per run")
    parser.add_argument(
        "--exhaustive-samples",
        type=int,
        default=100,
        help="decisions timed with no candidate limit (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=1)
    output_arguments(parser)
    args = parser.parse_args(argv)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    limit = args.limit or None

    info = machine()
    print(
        f"# {info['date']}  {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB, "
        f"load {info['load_avg_at_start']}",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    failed = False
    for count in args.nodes:
        rng = random.Random(args.seed)
        cluster = build_nodes(count, rng)
        specs = scaled_specs(task_shapes(200, rng), cluster, args.placements, args.fill)
        order = [rng.randrange(len(specs)) for _ in range(args.placements)]
        for algorithm in algorithms:
            result = run(algorithm, cluster, specs, order, limit=limit, chunks=args.chunks)
            row = result.summary()
            if args.exhaustive_samples and algorithm != "round-robin":
                row["us_exhaustive"] = exhaustive_cost(
                    algorithm, cluster, specs, args.exhaustive_samples
                )
            rows.append(row)
            failed |= bool(result.violations)
            for problem in result.violations[:5]:
                print(f"INFEASIBLE {algorithm} {count}: {problem}", file=sys.stderr)
            print(
                f"{algorithm:12} {count:6,} nodes: {row['rate_cpu']:7,.0f} placements/CPU-s "
                f"{row['rate_wall']:7,.0f}/s wall, {row['us_per_decision']:6.0f} µs/decision, "
                f"{row['placed']:,}/{row['placements']:,} placed",
                file=sys.stderr,
            )
    print(table(rows, COLUMNS))
    print()
    for row in rows:
        if row["algorithm"] in TARGET_ALGORITHMS and row["nodes"] == TARGET_NODES:
            ok = row["rate_cpu"] >= TARGET_RATE
            print(
                f"target {row['algorithm']} at {TARGET_NODES:,} nodes: >= {TARGET_RATE:,.0f}/s; "
                f"measured {row['rate_cpu']:,.0f}/CPU-s ({row['rate_wall']:,.0f}/s wall): "
                f"{'met' if ok else 'MISSED'}"
            )
    if args.json:
        save_json(args.json, {"machine": info, "args": vars(args), "results": rows})
    if args.plot:
        plot(rows, args.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
