"""``recstream experiment report``: views and clicks per variant, counted from the events log itself.

Exact and independent of the workers: the events topic is read from its earliest offset up to the
end offsets of the moment the report starts (or a JSONL file is read), and every valid event whose
``variant`` names the experiment is counted. The statistics are recstream/experiments.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from rich.table import Table

from recstream import sources
from recstream.events import Event, decode
from recstream.experiments import Comparison
from recstream.settings import Settings

REPLAY_NOW_MS = 2**53
"""A replay judges no timestamp as "in the future": the events were accepted when they were published."""


def count_variants(events: Iterable[object], experiment: str) -> dict[str, tuple[int, int]]:
    """(views, clicks) per variant of ``experiment``, from events carrying ``"<experiment>:<variant>"``.

    >>> e = [Event(type=t, user_id="u", item_id="i", ts=10**12, variant=v)
    ...      for t, v in [("view", "x:a"), ("click", "x:a"), ("view", "x:b"), ("view", "y:a"), ("view", None)]]
    >>> count_variants(e, "x")
    {'a': (1, 1), 'b': (1, 0)}
    """
    counts: dict[str, list[int]] = {}
    for event in events:
        _count(counts, event, f"{experiment}:")
    return _sorted(counts)


async def count_log(settings: Settings, experiment: str) -> dict[str, tuple[int, int]]:
    """:func:`count_variants` over the events topic, streamed (the log is never held in memory)."""
    counts: dict[str, list[int]] = {}
    async for event in log_events(settings):
        _count(counts, event, f"{experiment}:")
    return _sorted(counts)


def _count(counts: dict[str, list[int]], event: object, prefix: str) -> None:
    if isinstance(event, Event) and event.variant is not None and event.variant.startswith(prefix):
        row = counts.setdefault(event.variant[len(prefix) :], [0, 0])
        row[event.type == "click"] += 1


def _sorted(counts: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    return {variant: (views, clicks) for variant, (views, clicks) in sorted(counts.items())}


def file_events(path: Path) -> Iterable[object]:
    """The valid records of a JSONL file (``recstream produce --file`` format); others are left out."""
    return (record.value for record in sources.read_jsonl(path, now_ms=REPLAY_NOW_MS))


async def log_events(settings: Settings) -> AsyncIterator[Event]:
    """Every valid event on the events topic, from the log start to the end offsets as of now.

    A group-less consumer (streams/log.py), so reading never joins or disturbs the workers' group.
    """
    from streams.log import open_log, read, whole_topic

    async with open_log(settings) as consumer:
        ranges = await whole_topic(consumer, settings.events_topic)
        async for chunk in read(consumer, ranges, settings.batch_max):
            for message in chunk:
                for event in decode(message.value, "event", REPLAY_NOW_MS)[0]:
                    yield event


def report_table(experiment: str, comparison: Comparison) -> Table:
    """One row per variant: views, clicks, CTR with its 95% interval, lift and p-value against the control."""
    table = Table(title=f"experiment {experiment}: {comparison.verdict}", caption=_caption(comparison))
    for column in ("variant", "views", "clicks", "CTR", "95% CI", "lift vs control", "p-value"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for arm in comparison.arms:
        name = f"{arm.name} (control)" if arm.name == comparison.control else arm.name
        table.add_row(
            f"[bold]{name}[/bold]" if arm.name == comparison.winner else name,
            f"{arm.views:,}",
            f"{arm.clicks:,}",
            "n/a" if arm.ctr is None else f"{arm.ctr:.2%}",
            f"{arm.ci[0]:.2%}–{arm.ci[1]:.2%}",
            "" if arm.lift is None else f"{arm.lift:+.1%}",
            "" if arm.p_value is None else f"{arm.p_value:.2g}",
        )
    return table


def _caption(comparison: Comparison) -> str:
    others = max(len(comparison.arms) - 1, 1)
    level = comparison.alpha / others
    return (
        f"two-proportion z-test against {comparison.control}, significant below p = {level:.3g}"
        + (f" (α = {comparison.alpha} / {others} comparisons)" if others > 1 else "")
        + "; Wilson 95% intervals"
    )
