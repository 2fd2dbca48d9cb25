"""Sticky pulling vs FIFO, simulated: ``python bench/sticky.py``.

100 adapters, Zipf(1.1) arrivals, one worker with 8 adapter slots, batches
of 16, a swap (adapter into a slot) costing 30 % of a batch. Both policies
see the same arrivals. The offered load is stated relative to FIFO's
capacity under that arrival mix (measured here, at saturation), because the
trade-off depends on it: at low load FIFO's waits are tiny and holding a
shallow queue until it is overdue only adds wait; near saturation FIFO's
swaps are what saturates it.

Prints one JSON line per figure: ``figure``, ``value`` and the context.
"""

from __future__ import annotations

import argparse
import json

from workers.sticky_sim import WorkerModel, simulate, zipf_arrivals


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def fifo_capacity(model: WorkerModel, *, jobs: int, seed: int) -> float:
    """Jobs per second FIFO sustains on this mix: all jobs present at once."""
    arrivals = zipf_arrivals(adapters=100, s=1.1, jobs=jobs, rate_per_s=1e9, seed=seed)
    result = simulate(arrivals, policy="fifo", model=model)
    busy = result.batches * model.batch_s + result.swaps * model.swap_s
    return jobs / busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--load", type=float, default=0.95, help="offered load / FIFO capacity")
    parser.add_argument("--max-wait", type=float, default=30.0, help="the policy's bound, seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    model = WorkerModel(slots=8, batch_rows=16, batch_s=0.1, swap_s=0.03, max_wait_s=args.max_wait)
    capacity = fifo_capacity(model, jobs=args.jobs, seed=args.seed)
    rate = args.load * capacity
    arrivals = zipf_arrivals(adapters=100, s=1.1, jobs=args.jobs, rate_per_s=rate, seed=args.seed)
    fifo = simulate(arrivals, policy="fifo", model=model)
    sticky = simulate(arrivals, policy="sticky", model=model)
    context = {
        "adapters": 100,
        "zipf_s": 1.1,
        "slots": 8,
        "jobs": args.jobs,
        "load_over_fifo_capacity": args.load,
        "arrivals_per_s": round(rate, 2),
    }
    figures = [
        (
            "sticky_swaps_over_fifo",
            sticky.swaps / fifo.swaps,
            {"goal": "<= 0.2", "sticky_swaps": sticky.swaps, "fifo_swaps": fifo.swaps},
        ),
        (
            "sticky_p99_wait_over_fifo",
            p99(sticky.waits) / p99(fifo.waits),
            {"goal": "<= 2", "sticky_p99_s": round(p99(sticky.waits), 3), "fifo_p99_s": round(p99(fifo.waits), 3)},
        ),
        (
            "sticky_max_wait_s",
            max(sticky.waits),
            {"bound_s": args.max_wait, "over_bound": round(max(sticky.waits) / args.max_wait, 3)},
        ),
    ]
    for name, value, extra in figures:
        print(json.dumps({"figure": name, "value": round(value, 4), **extra, **context}))


if __name__ == "__main__":
    main()
