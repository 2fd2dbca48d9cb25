"""Sticky pulling vs FIFO, simulated: ``python bench/sticky.py``.

One worker (``workers.sticky_sim``: continuous batching of 16 rows over 8
adapter slots, LRU eviction, three batches of messages held) serves 40
adapters with Zipf(1.1) Poisson arrivals; each job runs 1-64 decode steps.
Costs are the engine's measured ratio of a swap to a batch step: CPU-like,
a swap is 30 % of a step; GPU-like, 3 %. FIFO (the oldest message of any
queue, whatever its adapter) and sticky pulling run on the same trace and
the same engine model; figures are ratios to FIFO. The offered load is
stated relative to FIFO's capacity under that mix and cost (measured here,
all jobs present at once), so FIFO is stable and the comparison fair.

Then a burst: 10,000 jobs at once over 20 adapters, where what matters is
adapter loads per 1,000 jobs and how long any adapter with waiting jobs
goes unserved.

Prints one JSON line per figure: ``figure``, ``value`` and the context.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace

from workers.sticky_sim import Arrival, SimResult, WorkerModel, simulate, zipf_arrivals

ADAPTERS, ZIPF_S, MAX_STEPS = 40, 1.1, 64
STEP_S = 0.01
SWAP_OVER_STEP = {"cpu": 0.30, "gpu": 0.03}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def fifo_capacity(model: WorkerModel, *, jobs: int, seed: int) -> float:
    """Jobs per second FIFO sustains on this mix: all jobs present at once."""
    arrivals = zipf_arrivals(adapters=ADAPTERS, s=ZIPF_S, jobs=jobs, rate_per_s=1e9, seed=seed, max_steps=MAX_STEPS)
    return jobs / simulate(arrivals, policy="fifo", model=model).busy_s


def side_by_side(
    model: WorkerModel, *, jobs: int, load: float, seed: int
) -> tuple[list[Arrival], SimResult, SimResult, float]:
    """FIFO and sticky on one trace offered at ``load`` times FIFO's capacity."""
    rate = load * fifo_capacity(model, jobs=jobs // 2, seed=seed + 1)
    arrivals = zipf_arrivals(adapters=ADAPTERS, s=ZIPF_S, jobs=jobs, rate_per_s=rate, seed=seed, max_steps=MAX_STEPS)
    return (
        arrivals,
        simulate(arrivals, policy="fifo", model=model),
        simulate(arrivals, policy="sticky", model=model),
        rate,
    )


def max_unserved_s(arrivals: list[Arrival], result: SimResult) -> float:
    """The longest time any adapter had jobs waiting and none of its rows joined the batch."""
    served: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    for index, at in result.served.items():
        adapter = arrivals[index].adapter
        served.setdefault(adapter, []).append(at)
        first[adapter] = min(first.get(adapter, arrivals[index].at_s), arrivals[index].at_s)
    worst = 0.0
    for adapter, times in served.items():
        times.sort()
        worst = max(worst, times[0] - first[adapter], *(b - a for a, b in itertools.pairwise(times)))
    return worst


def burst_figures(model: WorkerModel, *, seed: int) -> list[tuple[str, float, dict[str, object]]]:
    """10,000 jobs at once over 20 equally busy adapters: loads per 1,000 jobs (the engine alone,
    sorted by adapter, loads each adapter once: 2 per 1,000) and the longest any adapter with
    waiting jobs went unserved (the bound is on that: every job cannot start within the bound when
    the backlog takes longer than the bound to drain)."""
    jobs, adapters = 10_000, 20
    arrivals = zipf_arrivals(adapters=adapters, s=0.0, jobs=jobs, rate_per_s=1e9, seed=seed, max_steps=MAX_STEPS)
    fifo = simulate(arrivals, policy="fifo", model=model)
    sticky = simulate(arrivals, policy="sticky", model=model)
    context: dict[str, object] = {
        "burst_jobs": jobs,
        "burst_adapters": adapters,
        "swap_over_step": SWAP_OVER_STEP["cpu"],
    }
    return [
        (
            "burst_loads_per_1k_jobs",
            sticky.swaps * 1000 / jobs,
            {
                "goal": "<= 10",
                "fifo": round(fifo.swaps * 1000 / jobs, 1),
                "engine_alone": adapters * 1000 / jobs,
                **context,
            },
        ),
        (
            "burst_max_unserved_s",
            max_unserved_s(arrivals, sticky),
            {
                "bound_s": model.max_wait_s,
                "goal_s": round(model.max_wait_s + model.longest_batch_s(MAX_STEPS), 3),
                "drain_s": round(sticky.end_s, 1),
                **context,
            },
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--load", type=float, default=0.95, help="offered load / FIFO capacity")
    parser.add_argument("--max-wait", type=float, default=30.0, help="the policy's bound, seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    base = WorkerModel(step_s=STEP_S, max_wait_s=args.max_wait)
    runs = {
        cost: side_by_side(replace(base, swap_s=ratio * STEP_S), jobs=args.jobs, load=args.load, seed=args.seed)
        for cost, ratio in SWAP_OVER_STEP.items()
    }
    context = {"adapters": ADAPTERS, "zipf_s": ZIPF_S, "slots": base.slots, "batch_rows": base.batch_rows}
    context |= {"max_steps": MAX_STEPS, "jobs": args.jobs, "load_over_fifo_capacity": args.load}
    figures = []
    for cost, (arrivals, fifo, sticky, rate) in runs.items():
        suffix = "" if cost == "cpu" else "_gpu_cost"
        waits = {"fifo": fifo.waits(arrivals), "sticky": sticky.waits(arrivals)}
        costs = {"swap_over_step": SWAP_OVER_STEP[cost], "arrivals_per_s": round(rate, 2)}
        figures += [
            (
                f"sticky_swaps_over_fifo{suffix}",
                sticky.swaps / fifo.swaps,
                {
                    "goal": "<= 0.3" if not suffix else None,
                    "sticky_swaps": sticky.swaps,
                    "fifo_swaps": fifo.swaps,
                    **costs,
                },
            ),
            (
                f"sticky_p99_wait_over_fifo{suffix}",
                p99(waits["sticky"]) / p99(waits["fifo"]),
                {
                    "goal": "<= 1.0",
                    "sticky_p99_s": round(p99(waits["sticky"]), 3),
                    "fifo_p99_s": round(p99(waits["fifo"]), 3),
                    **costs,
                },
            ),
        ]
        if cost == "cpu":
            one_batch = replace(base, swap_s=SWAP_OVER_STEP[cost] * STEP_S).longest_batch_s(MAX_STEPS)
            worst = max(waits["sticky"])
            figures.append(
                (
                    "sticky_max_wait_s",
                    worst,
                    {
                        "bound_s": args.max_wait,
                        "goal_s": round(args.max_wait + one_batch, 3),
                        "fifo_max_wait_s": round(max(waits["fifo"]), 3),
                        **costs,
                    },
                )
            )
    figures += burst_figures(replace(base, swap_s=SWAP_OVER_STEP["cpu"] * STEP_S), seed=args.seed)
    for name, value, extra in figures:
        extra = {k: v for k, v in extra.items() if v is not None}
        print(json.dumps({"figure": name, "value": round(value, 4), **extra, **context}))


if __name__ == "__main__":
    main()
