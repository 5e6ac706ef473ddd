"""``recstream experiment report``: views and clicks per variant, counted from the events log itself.

Exact and independent of the workers: the events topic is read from its earliest offset up to the
end offsets of the moment the report starts (or a JSONL file is read), and every valid event whose
``variant`` names the experiment is counted, a user's event id once (as the workers and training count it: a
client retrying after a 503 sends the same events again). The statistics are recstream/jobs/experiment_stats.py's,
and a sample-ratio check (:func:`sample_ratio`) comes first: arms whose user counts do not fit the configured
weights were not randomized as configured (a broken assignment, arms logged unequally), and no CTR comparison
between them names a winner.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from scipy.special import chdtrc

from recstream.contracts.events import Event, Rejected, decode
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.settings import Settings
from recstream.jobs import sources
from recstream.jobs.experiment_stats import Comparison
from recstream.jobs.training import NO_ID, id_key

REPLAY_NOW_MS = 2**53
"""A replay judges no timestamp as "in the future": the events were accepted when they were published."""
SRM_ALPHA = 0.001
"""A sample-ratio check's p below this is a mismatch: strict, since it runs on every report and a true mismatch
(a 1,800 / 200 split of a 50/50 test) has a p many orders of magnitude smaller."""


class VariantCounts:
    """An experiment's views and clicks per variant and user: the totals for the CTRs and the two-proportion
    test, the per-user rows for the user-level test."""

    def __init__(self, experiment: str, ctr_column: Mapping[str, int] = DEFAULT_FEEDBACK.ctr_column) -> None:
        self.prefix = f"{experiment}:"
        self.per_user: dict[str, dict[str, list[int]]] = {}
        self.ctr_column = ctr_column  # which types count as views (0) and clicks (1): the workers' CTR
        self.event_ids: set[bytes] = set()  # training.id_key of the experiment's events counted (the workers' pair)
        self.repeated = 0  # events left out as a repeat of a user's event id

    def add(self, event: object) -> None:
        if isinstance(event, Event) and event.variant is not None and event.variant.startswith(self.prefix):
            key = id_key(event)
            if key != NO_ID:  # without an id it is always counted, as the workers do
                if key in self.event_ids:
                    self.repeated += 1
                    return
                self.event_ids.add(key)
            column = self.ctr_column.get(event.type)
            if column is None:  # outside CTR (a purchase, a dislike)
                return
            users = self.per_user.setdefault(event.variant[len(self.prefix) :], {})
            users.setdefault(event.user_id, [0, 0])[column] += 1

    @property
    def totals(self) -> dict[str, tuple[int, int]]:
        """(views, clicks) per variant, by name."""
        return {
            variant: (sum(v for v, _ in users.values()), sum(c for _, c in users.values()))
            for variant, users in sorted(self.per_user.items())
        }

    @property
    def users(self) -> dict[str, list[tuple[int, int]]]:
        """Each variant's users' (views, clicks)."""
        return {variant: [(v, c) for v, c in users.values()] for variant, users in self.per_user.items()}

    @property
    def in_several_arms(self) -> int:
        """Users counted in more than one variant: assignment is a function of the user, so each is a broken
        assignment or a client sending another user's label."""
        arms = Counter(user for users in self.per_user.values() for user in users)
        return sum(n > 1 for n in arms.values())


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The arms' user counts against the configured weights: Pearson's chi-square goodness of fit."""

    users: dict[str, int]
    weights: dict[str, float]
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA

    def describe(self) -> str:
        split = " / ".join(f"{self.users[name]:,}" for name in self.weights)
        shares = " / ".join(f"{weight:g}" for weight in self.weights.values())
        return f"users {split} against weights {shares} ({', '.join(self.weights)}), p = {self.p_value:.2g}"


def sample_ratio(users: Mapping[str, int], weights: Mapping[str, float]) -> SampleRatio:
    """Whether the configured variants' user counts fit their weights: χ² = Σ (n_i − N·w_i)² / (N·w_i) with k − 1
    degrees of freedom (arms seen but not configured are left out, and show in the table).

    >>> sample_ratio({"a": 1_800, "b": 200}, {"a": 0.5, "b": 0.5}).mismatch
    True
    >>> round(sample_ratio({"a": 1_030, "b": 970}, {"a": 0.5, "b": 0.5}).p_value, 3)
    0.18
    """
    observed = {name: users.get(name, 0) for name in weights}
    total, weight_sum = sum(observed.values()), sum(weights.values())
    expected = {name: total * weight / weight_sum for name, weight in weights.items()}
    chi2 = sum((observed[name] - e) ** 2 / e for name, e in expected.items()) if total else 0.0
    return SampleRatio(observed, dict(weights), float(chdtrc(len(weights) - 1, chi2)))


def count_variants(
    events: Iterable[object], experiment: str, ctr_column: Mapping[str, int] = DEFAULT_FEEDBACK.ctr_column
) -> VariantCounts:
    """Count the events whose ``variant`` is ``"<experiment>:<variant>"``, as views and clicks by ``ctr_column``.

    >>> e = [Event(type=t, user_id=u, item_id="i", ts=10**12, variant=v) for t, u, v in [("view", "u1", "x:a"),
    ...      ("click", "u1", "x:a"), ("view", "u2", "x:a"), ("view", "u3", "x:b"), ("view", "u4", "y:a"),
    ...      ("view", "u5", None)]]
    >>> counts = count_variants(e, "x")
    >>> counts.totals, counts.users
    ({'a': (2, 1), 'b': (1, 0)}, {'a': [(1, 1), (1, 0)], 'b': [(1, 0)]})
    """
    counts = VariantCounts(experiment, ctr_column)
    for event in events:
        counts.add(event)
    return counts


async def count_log(settings: Settings, experiment: str) -> VariantCounts:
    """:func:`count_variants` over the events topic, streamed (the log is never held in memory)."""
    counts = VariantCounts(experiment, settings.model.feedback_types.ctr_column)
    async for event in log_events(settings):
        counts.add(event)
    return counts


def file_events(
    path: Path, feedback: FeedbackTypes = DEFAULT_FEEDBACK, refused: list[str] | None = None
) -> Iterator[object]:
    """The valid records of a JSONL file (``recstream produce --file`` format); each refused line is left out, and
    named in ``refused`` (``"line N: reason"``), so that the report can say what it did not count."""
    for record in sources.read_jsonl(path, now_ms=REPLAY_NOW_MS, feedback=feedback):
        if not isinstance(record.value, Rejected):
            yield record.value
        elif refused is not None:
            refused.append(record.refusal)


async def log_events(settings: Settings) -> AsyncIterator[Event]:
    """Every valid event on the events topic, from the log start to the end offsets as of now.

    A group-less consumer (recstream/eventlog/log.py), so reading never joins or disturbs the workers' group.
    """
    from recstream.eventlog.log import open_log, read, whole_topic

    async with open_log(settings) as consumer:
        ranges = await whole_topic(consumer, settings.kafka.events_topic)
        async for chunk in read(consumer, ranges, settings.worker.batch_max):
            for message in chunk:
                for event in decode(message.value, "event", REPLAY_NOW_MS, settings.model.feedback_types)[0]:
                    yield event


def report_table(
    experiment: str, comparison: Comparison, counts: VariantCounts, weights: Mapping[str, float] | None
) -> Table:
    """One row per variant: views, clicks, CTR with its 95% interval, lift and p-value against the control. The title
    gives the verdict, or a sample-ratio mismatch instead (no winner then); ``weights`` None: not configured here,
    so the ratio is not checked."""
    ratio = None if weights is None else sample_ratio({a: len(u) for a, u in counts.per_user.items()}, weights)
    mismatch = ratio if ratio is not None and ratio.mismatch else None
    winner = None if mismatch else comparison.winner
    heading = f"experiment {experiment} (control {comparison.control})"
    title = (
        f"[bold red]{heading}: SAMPLE RATIO MISMATCH, no winner declared: {mismatch.describe()}[/bold red]"
        if mismatch
        else f"{heading}: {comparison.verdict}"
    )
    table = Table(title=title, caption=_caption(comparison, counts, ratio))
    for column in ("variant", "views", "clicks", "CTR", "95% CI", "lift", "p views", "p users"):
        table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=True)
    for arm in comparison.arms:
        table.add_row(
            f"[bold]{arm.name}[/bold]" if arm.name == winner else arm.name,
            f"{arm.views:,}",
            f"{arm.clicks:,}",
            "n/a" if arm.ctr is None else f"{arm.ctr:.2%}",
            f"{100 * arm.ci[0]:.2f}–{100 * arm.ci[1]:.2f}%",
            "" if arm.lift is None else f"{arm.lift:+.1%}",
            "" if arm.p_value is None else f"{arm.p_value:.2g}",
            "" if arm.p_users is None else f"{arm.p_users:.2g}",
        )
    return table


def _caption(comparison: Comparison, counts: VariantCounts, ratio: SampleRatio | None) -> str:
    others = max(len(comparison.arms) - 1, 1)
    level = comparison.alpha / others
    checks = [
        f"against {comparison.control}: two-proportion z-test (views as trials) and delta-method test (users "
        f"as units); significant when both p < {level:.3g}"
        + (f" (α = {comparison.alpha} / {others} comparisons)" if others > 1 else "")
        + "; Wilson 95% intervals",
        "sample ratio not checked (the experiment is not the configured one: its weights are unknown)"
        if ratio is None
        else f"sample ratio: {ratio.describe()}; a mismatch below p {SRM_ALPHA:g}",
    ]
    if several := counts.in_several_arms:
        checks.append(f"[bold red]{several:,} users counted in more than one arm[/bold red]")
    if counts.repeated:
        checks.append(f"{counts.repeated:,} repeated event ids counted once")
    return "\n".join(checks)
