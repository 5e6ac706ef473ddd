"""User steps per second at k=64: our single and batched paths against implicit, same data, same run.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.user_steps

Y is a fixed random 1,682×64 float32 matrix (MovieLens 100K's catalogue size); 4,000 users
with histories of 20–50 distinct items and confidences in [1, 21). Every path runs on one
core (BLAS pinned to 1 thread, implicit with num_threads=1); each figure is the best of
5 repeats. Writes `user_steps_per_s`, one user at a time (`ALSStep.solve`; baseline: implicit's
`recalculate_user` per user), `user_steps_per_s_batched`, the path the worker runs for a batch's users
(`ALSStep.solve_batch`, streams/personalize.py, bit-identical to the single path; baseline: implicit's batched
`recalculate_user`), and `user_steps_per_s_anchored`, the same batched path anchored to every user's batch vector
(μ = ALSConfig's default, what the worker runs for a user the version's fit knew; baseline: the plain batched path)
into bench/results.json. The anchored step solves another system, so its vectors differ from the others' by design;
that they are the formula's, x = (A + μI)⁻¹(b + μx̄), is tested (tests/models/test_user_step.py).
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads OpenBLAS

import argparse
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from recstream.models.als import ALSConfig
from recstream.models.user_step import ALSStep
from rich.table import Table
from threadpoolctl import threadpool_limits

from bench.common import figure, machine, record, show

N_ITEMS, K, N_USERS, REGULARIZATION, REPEATS = 1682, 64, 4000, 0.1, 5
COMMAND = "OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.user_steps"
SINGLE = "ours, single (ALSStep.solve per user)"
BATCHED = "ours, batched (ALSStep.solve_batch)"
"""The path streams/personalize.py runs: a user's result is the single path's, bit for bit, whoever shares its batch."""
ANCHOR = ALSConfig().anchor
ANCHORED = f"ours, batched, anchored (μ = {ANCHOR:g}, every user known to the fit)"
IMPLICIT_SINGLE, IMPLICIT_BATCHED = "implicit recalculate_user, per user", "implicit recalculate_user, batched"


def best_rate(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """(best steps/s over REPEATS runs, the output of the last run)."""
    best = 0.0
    for _ in range(REPEATS):
        started = time.perf_counter()
        out = run()
        best = max(best, N_USERS / (time.perf_counter() - started))
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    item_factors = (rng.standard_normal((N_ITEMS, K)) * 0.1).astype(np.float32)
    lengths = rng.integers(20, 51, N_USERS)
    rows = np.concatenate([rng.choice(N_ITEMS, n, replace=False) for n in lengths])
    indptr = np.r_[0, np.cumsum(lengths)]
    conf = 1.0 + 20.0 * rng.random(len(rows))
    spans = [slice(indptr[u], indptr[u + 1]) for u in range(N_USERS)]

    step = ALSStep(item_factors, REGULARIZATION)
    anchored = step.with_anchor(ANCHOR)
    priors = list((rng.standard_normal((N_USERS, K)) * 0.1).astype(np.float32))  # the fit's user vectors
    user_items = sp.csr_matrix((conf.astype(np.float32), rows, indptr), shape=(N_USERS, N_ITEMS))
    user_rows = [user_items[u] for u in range(N_USERS)]
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=K, regularization=REGULARIZATION, alpha=1.0, num_threads=1)
    model.item_factors = item_factors
    model.user_factors = np.zeros((N_USERS, K), dtype=np.float32)
    all_users = np.arange(N_USERS)

    paths = {
        SINGLE: lambda: np.stack([step.solve(rows[s], conf[s]) for s in spans]),
        BATCHED: lambda: step.solve_batch(indptr, rows, conf),
        ANCHORED: lambda: anchored.solve_batch(indptr, rows, conf, priors),
        IMPLICIT_SINGLE: lambda: np.stack([model.recalculate_user(u, user_rows[u]) for u in range(N_USERS)]),
        IMPLICIT_BATCHED: lambda: model.recalculate_user(all_users, user_items),
    }
    rates, outputs = {}, {}
    with threadpool_limits(1, "blas"):
        for name, run in paths.items():
            rates[name], outputs[name] = best_rate(run)

    reference = outputs[SINGLE]
    load = os.getloadavg()[0]  # wall-clock rates: other work on the shared cores lowers them
    table = Table(title=f"User steps/s, k={K}, {N_ITEMS} items, {N_USERS} users × 20–50 items, 1 core "
                  f"({machine()}; load average {load:.1f})")  # fmt: skip
    for column in ("path", "steps/s", "max |Δ| vs ours single"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, rate in rates.items():
        delta = "another system" if name == ANCHORED else f"{np.abs(outputs[name] - reference).max():.1e}"
        table.add_row(name, f"{rate:,.0f}", delta)
    show(table)
    if args.no_record:
        return
    record({
        "user_steps_per_s": figure(rates[SINGLE], "steps/s", COMMAND, rates[IMPLICIT_SINGLE]),
        "user_steps_per_s_batched": figure(rates[BATCHED], "steps/s", COMMAND, rates[IMPLICIT_BATCHED]),
        "user_steps_per_s_anchored": figure(rates[ANCHORED], "steps/s", COMMAND, rates[BATCHED]),
    })  # fmt: skip


if __name__ == "__main__":
    main()
