"""``recstream experiment report``: views and clicks per variant, counted from the events log itself.

Exact and independent of the workers: the events topic is read from its earliest offset up to the
end offsets of the moment the report starts (or a JSONL file is read), and every valid event whose
``variant`` names the experiment is counted. The statistics are recstream/jobs/experiment_stats.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path

from rich.table import Table

from recstream.contracts.events import Event, Rejected, decode
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.settings import Settings
from recstream.jobs import sources
from recstream.jobs.experiment_stats import Comparison

REPLAY_NOW_MS = 2**53
"""A replay judges no timestamp as "in the future": the events were accepted when they were published."""


class VariantCounts:
    """An experiment's views and clicks per variant and user: the totals for the CTRs and the two-proportion
    test, the per-user rows for the user-level test."""

    def __init__(self, experiment: str, ctr_column: Mapping[str, int] = DEFAULT_FEEDBACK.ctr_column) -> None:
        self.prefix = f"{experiment}:"
        self.per_user: dict[str, dict[str, list[int]]] = {}
        self.ctr_column = ctr_column  # which types count as views (0) and clicks (1): the workers' CTR

    def add(self, event: object) -> None:
        if isinstance(event, Event) and event.variant is not None and event.variant.startswith(self.prefix):
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


def report_table(experiment: str, comparison: Comparison) -> Table:
    """One row per variant: views, clicks, CTR with its 95% interval, lift and p-value against the control."""
    title = f"experiment {experiment} (control {comparison.control}): {comparison.verdict}"
    table = Table(title=title, caption=_caption(comparison))
    for column in ("variant", "views", "clicks", "CTR", "95% CI", "lift", "p views", "p users"):
        table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=True)
    for arm in comparison.arms:
        table.add_row(
            f"[bold]{arm.name}[/bold]" if arm.name == comparison.winner else arm.name,
            f"{arm.views:,}",
            f"{arm.clicks:,}",
            "n/a" if arm.ctr is None else f"{arm.ctr:.2%}",
            f"{100 * arm.ci[0]:.2f}–{100 * arm.ci[1]:.2f}%",
            "" if arm.lift is None else f"{arm.lift:+.1%}",
            "" if arm.p_value is None else f"{arm.p_value:.2g}",
            "" if arm.p_users is None else f"{arm.p_users:.2g}",
        )
    return table


def _caption(comparison: Comparison) -> str:
    others = max(len(comparison.arms) - 1, 1)
    level = comparison.alpha / others
    return (
        f"against {comparison.control}: two-proportion z-test (views as trials) and delta-method test (users "
        f"as units); significant when both p < {level:.3g}"
        + (f" (α = {comparison.alpha} / {others} comparisons)" if others > 1 else "")
        + "; Wilson 95% intervals"
    )
