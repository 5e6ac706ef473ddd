"""The prequential benchmark's scoring, table and results.json figures.

Every row reports HR@10, nDCG@10, catalogue coverage, novelty (mean −log2 of an item's add-one
smoothed share of the history's ratings) and intra-list diversity (mean pairwise genre-Jaccard
distance), models/ranking_metrics.py; results.json gets ``prequential_<metric>_<row>`` for the
baselines and the pipeline rows, each pipeline row with the frozen batch model's figure of the same
run as its ``baseline`` (BASELINE_OF). The consistency check is a check, not a figure: its share of
identical lists is in the table, and the run fails below bench/prequential.CONSISTENCY_MIN.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from recstream.models.als import ALSConfig
from recstream.serving.ranking import average_weights, named_weights
from rich.console import Console
from rich.table import Table

from bench.common import figure, machine, record, show
from bench.prequential_protocol import Rating, Stream, Tally
from bench.prequential_rows import PipelineResult
from recstream.contracts.settings import load_settings

METRICS = {  # results.json key part → (column, unit, format)
    "hr10": ("HR@10", "HR@10", "{:.4f}"),
    "ndcg10": ("nDCG@10", "nDCG@10", "{:.4f}"),
    "coverage": ("coverage", "share of catalogue", "{:.3f}"),
    "novelty": ("novelty", "bits", "{:.2f}"),
    "ild": ("ILD", "mean pairwise genre-Jaccard distance", "{:.3f}"),
}
BASELINE_OF = {"candidates": "frozen", "served": "frozen", "served_fixed": "frozen"}
"""Each recorded pipeline row's ``baseline`` in results.json: the batch model without streaming updates."""
SERVED_LABELS = {
    "served_fixed": "pipeline served feed, ranker off (the fixed-quota blend)",
    "served": "pipeline served feed (default: ranked once the ranker is warm)",
}


@dataclass
class Scoring:
    """What the list metrics refer to: the catalogue (coverage), the history's ratings per item (novelty:
    −log2 of an item's smoothed share of them) and the items' genres (intra-list diversity)."""

    catalogue: int
    ratings: dict[str, int]
    genres: dict[str, tuple[str, ...]]
    _scores: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, stream: Stream, history: Sequence[Rating]) -> Scoring:
        ratings = Counter(r.item_id for r in history)
        return cls(len(stream.items), dict(ratings), {i: tuple(e.categories) for i, e in stream.items.items()})

    def __call__(self, tally: Tally) -> dict[str, float]:
        """Every METRICS figure of the tally (computed once: ILD compares 45 pairs per list)."""
        if id(tally) not in self._scores:
            self._scores[id(tally)] = {
                "hr10": tally.hr(),
                "ndcg10": tally.ndcg(),
                "coverage": tally.coverage(self.catalogue),
                "novelty": tally.novelty(self.ratings, self.catalogue),
                "ild": tally.diversity(self.genres),
            }
        return self._scores[id(tally)]


def identical_share(a: Tally, b: Tally) -> float:
    """Share of scored clicks on which two rows gave the same list; 0 when nothing was scored.

    >>> identical_share(Tally([["x"], ["y"]], ["x", "y"]), Tally([["x"], ["z"]], ["x", "y"]))
    0.5
    """
    return sum(x == y for x, y in zip(a.ranked, b.ranked, strict=True)) / max(a.clicks, 1)


def report(args: argparse.Namespace, cfg: ALSConfig, history_cap: int, m: int, tallies: dict[str, Tally],
           pipeline: PipelineResult | None, scoring: Scoring, cmd: str, console: Console) -> None:  # fmt: skip
    weights = load_settings().model.feedback_types.signed_weight
    title = (
        f"prequential, MovieLens 100K{'' if args.shuffle is None else f' in a random order (seed {args.shuffle})'}"
        f"{', every event at one instant' if args.no_clock else ''}, "
        f"last {1 - args.history_share:.0%} of events: "
        f"iALS k={cfg.factors} λ={cfg.regularization} α={cfg.alpha} it={cfg.iterations} "
        f"view={weights['view']:g} click={weights['click']:g}; history cap {history_cap}, candidates {m}"
    )
    table = Table(title=title)
    columns = ("row", *(label for label, _, _ in METRICS.values()), "clicks scored", "seconds", "note")
    for column in columns:
        table.add_column(column, justify="left" if column in ("row", "note") else "right")

    def add(name: str, tally: Tally | None, note: str = "") -> None:
        if tally is None:
            table.add_row(name, *("—" for _ in columns[1:-1]), note)
            return
        scores = scoring(tally)
        table.add_row(
            name, *(fmt.format(scores[key]) for key, (_, _, fmt) in METRICS.items()),
            f"{tally.clicks:,}", f"{tally.seconds:.1f}", note,
        )  # fmt: skip

    frozen, check = tallies["frozen (rounds)"], tallies["consistency (rounds)"]
    add("baseline: popularity", tallies["popularity (rounds)"])
    add("baseline: frozen batch iALS", frozen, f"{frozen.fallbacks:,} clicks by users unknown to it → popularity")
    add("consistency check: the worker's Personalizer in process", check,
        f"not a baseline: the candidates must equal it; {check.empty:,} clicks with no list yet")  # fmt: skip
    if pipeline is None:
        add("pipeline candidates", None, "not run (--no-pipeline)")
    else:
        add("pipeline candidates", pipeline.candidates,
            f"{identical_share(pipeline.candidates, check):.1%} of lists identical to the consistency check's; "
            f"HR@6 (the blend's personal slots) {pipeline.candidates.hr(6):.4f}")  # fmt: skip
    for name, label in SERVED_LABELS.items():
        row = pipeline.served.get(name) if pipeline is not None else None
        if row is None:
            add(label, None, "not run (--no-pipeline or --no-reader)")
            continue
        n = row.tally.clicks
        mix = ", ".join(f"{s} {slots / n:.1f} ({row.hits.get(s, 0) / n:.4f})" for s, slots in sorted(row.slots.items()))
        share = row.tally.hr() / max(pipeline.candidates.hr(), 1e-9)
        ranked = f"{row.ranked / max(n, 1):.1%} of pages ranked; " if row.ranked else ""
        add(label, row.tally,
            f"{share:.1%} of the candidates' HR@10; {ranked}slots per feed (HR from them): {mix}; "
            f"{row.retried} degraded answers asked again, {row.degraded} left degraded")  # fmt: skip
    add("popularity, strictly in order", tallies["popularity (in order)"], "schedule check")
    add("consistency check, strictly in order", tallies["consistency (in order)"], "schedule check")
    show(table, console)
    if pipeline is not None:
        console.print(
            f"pipeline: history replay {pipeline.history_seconds:.1f} s; {pipeline.rounds} rounds; publish + worker "
            f"catch-up {pipeline.catch_up_seconds:.1f} s (in every pipeline row), reader reload waits "
            f"{pipeline.reader_wait_seconds:.1f} s (served rows)"
        )
    if pipeline is not None and pipeline.trainer is not None:
        t = pipeline.trainer
        console.print(f"ranker: learned {t.rows:,} rows ({t.clicks:,} clicks) from the served row's pages, "
                      f"{len(t.states)} partition(s); {t.repeats:,} repeated views")  # fmt: skip
        named = named_weights(average_weights(t.states.values())[0])
        if named is not None:  # the run's end, after learning the last round's pages, as /v1/stats would show it
            console.print("ranker weights: " + ", ".join(f"{name} {weight:+.3f}" for name, weight in named.items()))
    console.print(f"machine: {machine()}; {date.today().isoformat()}; {cmd}")


def record_figures(tallies: dict[str, Tally], pipeline: PipelineResult, scoring: Scoring, cmd: str) -> None:
    """bench/results.json: prequential_<metric>_<row> for every METRICS figure of the baselines and pipeline rows."""
    rows = {name: tallies[f"{name} (rounds)"] for name in ("popularity", "frozen")}
    rows["candidates"] = pipeline.candidates
    rows.update((name, row.tally) for name, row in pipeline.served.items())
    figures = {}
    for name, tally in rows.items():
        baseline = rows.get(BASELINE_OF.get(name, ""))
        for key, (_, unit, _) in METRICS.items():
            base = scoring(baseline)[key] if baseline is not None else None
            figures[f"prequential_{key}_{name}"] = figure(scoring(tally)[key], unit, cmd, base)
    record(figures)
