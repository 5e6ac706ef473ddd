"""A newcomer's path, measured: MovieLens 100K from its raw files through ``recstream import`` and the client.

    .venv/bin/python -m bench.adopt                 # the whole tail (~270 rounds)
    .venv/bin/python -m bench.adopt --rounds 40     # a quick look

What README's "Use it in your product" says to do, on private Kafka and Redis: ``recstream import``
of ``u.user``, ``u.item`` (its genre flags as categories) and the ratings of ``u.data`` before the
cut, ``recstream train``, ``recstream rebuild`` (the imported log applied in order with the model),
then a worker and the reader. The tail then goes through the Python client, in the prequential
protocol's rounds (bench/prequential_protocol.py): each round fetches the scored users' first page
(``AsyncClient.feed``, seeded as bench/prequential.py seeds it), scores the clicked item, and posts
the round's ratings (``AsyncClient.send_events``). The served HR@10 is printed next to
bench/prequential.py's served row (``prequential_hr10_served``), which publishes the same stream with
the producer and announces items at their first rating, and next to popularity (top 10 by clicks so far,
minus what the user has seen) computed in memory on the same history and rounds in the same run. The served row
names how the reader made its pages (``recstream_reader_feeds_by_mode_total``): the harness posts the ratings and
never the views of the pages it fetched, so no event carries a served feature vector, the online ranker never
learns, and they are the fixed blend (``fixed-cold``; README, "Your events").

Also measured: the adopter path's wall-clock time, from the first ``recstream import`` to the first feed
page of a user of the ratings that holds a personal item (import, train, rebuild, worker and reader start).
Without MovieLens at ``--movielens`` the run fails at once, saying where it looked.

Differences, on purpose: the cut is a time (the 80% event's timestamp; ratings at that second go to the
tail, a handful), so that ``--before`` can make it; ids are MovieLens' own (``196``, not ``u196``); and
every item is in the catalogue from the start, with no ``created_ts`` (u.item has none): each is stamped with the
import's time and taken to be as old as its first rating, so the new-item pool holds the items first rated within
the graduation age of the event clock (until 3dd3354, every item with too few views to graduate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from bench.common import RESULTS, ROOT, fail, figure, modes, record, services, show
from bench.prequential import DEFAULT_MOVIELENS, LOGS, page_seed
from bench.prequential_protocol import K, Rating, Tally, events_of, group_ratings, rounds, split
from bench.prequential_rows import PopularityRow, replay_in_memory
from recstream.client import AsyncClient
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.log import open_log, whole_topic
from recstream.jobs.sources import movielens
from recstream.shell.demo import with_api_key
from recstream.shell.infra import Child

console = Console()
READER_WAIT_S = 0.25  # a snapshot reload that began after the catch-up (bench/prequential.py's --reader-wait-s)
CONCURRENCY = 4
COMMAND = ".venv/bin/python -m bench.adopt"
FIRST_FEED_TIMEOUT_S = 120.0


def recstream(settings: Settings, *args: str) -> float:
    """Run a ``recstream`` command as a newcomer would, with these settings in its environment; its seconds."""
    env = {**settings.environment(os.environ), "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "1000"}  # summaries unwrapped
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recstream.shell.cli", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True)  # fmt: skip
    errors = done.stderr.strip().splitlines()  # the summary is the last line (after any retry logged on the way)
    said = errors[-1] if errors else "done"
    console.print(f"recstream {' '.join(args[:2])} ({time.perf_counter() - started:.0f} s): {said}", soft_wrap=True)
    if done.returncode != 0:
        raise SystemExit(f"recstream {args[0]} failed ({done.returncode})")
    return time.perf_counter() - started


def import_movielens(settings: Settings, folder: Path, before_s: int) -> float:
    """The three imports; their seconds."""
    genres = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if line]
    names = [g.replace("'", "").replace(" ", "_") for g in genres]  # as recstream.jobs.sources.movielens names them
    return sum((
        recstream(settings, "import", str(folder / "u.user"), "--kind", "users", "--delimiter", "|",
                  "--columns", "user,age,gender,occupation,zip"),
        recstream(settings, "import", str(folder / "u.item"), "--kind", "items", "--delimiter", "|",
                  "--columns", ",".join(["item", "title", "release", "video", "url", *names]),
                  "--category-columns", ",".join(names)),
        recstream(settings, "import", str(folder / "u.data"), "--delimiter", "tab", "--columns",
                  "user,item,rating,ts", "--ts-unit", "s", "--sort", "--before", str(before_s)),
    ))  # fmt: skip


def raw(rating: Rating) -> list[dict[str, object]]:
    """The rating's events with MovieLens' own ids (the source prefixes them with u and i)."""
    return [
        {**e.model_dump(exclude_none=True), "user_id": e.user_id[1:], "item_id": e.item_id[1:]} for e in rating.events
    ]


async def caught_up(settings: Settings, redis: Redis) -> None:
    """Until the worker's watermarks reach the end of every events partition."""
    async with open_log(settings) as consumer:
        ends = await whole_topic(consumer, settings.kafka.events_topic)
    want = {f"{t}:{p}": end - 1 for (t, p), (_, end) in ends.items() if end > 0}
    while True:
        marks = {k.decode(): int(v) for k, v in (await redis.hgetall(Keys(settings.redis.prefix)("wm"))).items()}
        if all(marks.get(tp, -1) >= end for tp, end in want.items()):
            return
        await asyncio.sleep(0.01)


async def tail_through_the_client(settings: Settings, url: str, tail: list[Rating], max_rounds: int | None) -> Tally:
    tally = Tally()
    limit = asyncio.Semaphore(CONCURRENCY)
    redis = Redis.from_url(settings.redis.url)

    async def page(client: AsyncClient, user: str, step: int) -> list[str]:
        async with limit:
            return [i.item_id for i in (await client.feed(user, limit=K, seed=page_seed(user, step))).items]

    try:
        async with AsyncClient(url, api_key=api_key(settings), timeout_s=10) as client:
            for step, current in enumerate(rounds(tail)[:max_rounds]):
                if current.publish:
                    await client.send_events([e for r in current.publish for e in raw(r)])
                    await caught_up(settings, redis)
                    await asyncio.sleep(READER_WAIT_S)
                users = [r.user_id[1:] for r in current.score]
                pages = await asyncio.gather(*(page(client, user, step) for user in users))
                for rating, items in zip(current.score, pages, strict=True):
                    tally.add(items, rating.item_id[1:])
    finally:
        await redis.aclose()
    return tally


async def first_personal_feed(url: str, user: str) -> None:
    """Until the user's feed holds a personal item (their candidates, from the worker's user step)."""
    deadline = time.monotonic() + FIRST_FEED_TIMEOUT_S
    async with AsyncClient(url, timeout_s=10) as client:  # a read: no key needed
        while not any(i.source == "personal" for i in (await client.feed(user, limit=K)).items):
            if time.monotonic() > deadline:
                fail(f"no personal item in {user}'s feed {FIRST_FEED_TIMEOUT_S:.0f} s after the reader was ready")
            await asyncio.sleep(0.1)


def api_key(settings: Settings) -> str:
    key = settings.reader.api_key
    assert key is not None
    return key.get_secret_value()


def popularity(history: list[Rating], tail: list[Rating], max_rounds: int | None) -> Tally:
    """The same-run baseline: top 10 by clicks so far minus what the user has seen, on the same rounds."""
    tally = Tally()
    replay_in_memory({"popularity": PopularityRow()}, {"popularity": tally}, history, rounds(tail)[:max_rounds])
    return tally


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--rounds", type=int, default=None, help="score only the first N rounds (records nothing)")
    args = parser.parse_args(argv)
    if not (args.movielens / "u.data").is_file():
        fail(f"MovieLens 100K is not at {args.movielens} (u.data missing): pass --movielens DIR")
    stream = group_ratings(movielens(args.movielens))
    history, _ = split(stream.ratings, 0.8)
    cut_s = stream.ratings[len(history)].events[0].ts // 1000
    history = [r for r in stream.ratings if r.events[0].ts // 1000 < cut_s]
    tail = [r for r in stream.ratings if r.events[0].ts // 1000 >= cut_s]
    started = time.perf_counter()
    LOGS.mkdir(parents=True, exist_ok=True)
    # the tail replays months of ratings in minutes from one address, a relay of every user's clicks and not a person:
    # the per-client click limit is off, as README says to raise it for a backend that relays its users' events
    with services(pool_cache_s=0.1, popular_refresh_s=0.1, clicks_per_client=0) as plain:
        settings = with_api_key(plain)  # the reader refuses writes without one; the client sends it
        load, adopting = os.getloadavg()[0], time.perf_counter()
        steps = {
            "recstream import (users, items, ratings)": import_movielens(settings, args.movielens, cut_s),
            "recstream train": recstream(settings, "train"),
            "recstream rebuild": recstream(settings, "rebuild"),
        }
        worker = Child("worker", settings, LOGS / "adopt-worker.log")
        reader = Child("serve", settings, LOGS / "adopt-reader.log")
        try:
            reader.wait_ready()
            asyncio.run(first_personal_feed(reader.url, history[-1].user_id[1:]))
            adopted_s = time.perf_counter() - adopting
            steps["worker and reader start, first personal item in a feed"] = adopted_s - sum(steps.values())
            tally = asyncio.run(tail_through_the_client(settings, reader.url, tail, args.rounds))
            made = modes(reader.metrics())
        finally:
            worker.stop()
            reader.stop()
    if not tally.clicks:
        fail("no tail click was scored")
    baseline = popularity(history, tail, args.rounds)
    prequential = json.loads(RESULTS.read_text()).get("prequential_hr10_served", {}).get("value")
    table = Table(title=f"MovieLens 100K through recstream import and the client ({tally.clicks:,} tail clicks)")
    for column in ("row", "HR@10", "nDCG@10"):
        table.add_column(column, justify="left" if column == "row" else "right")
    table.add_row("popularity (in memory, same rounds)", f"{baseline.hr():.4f}", f"{baseline.ndcg():.4f}")
    pages = ", ".join(f"{n:,} {mode}" for mode, n in made.most_common() if n)  # ranked only with reported views
    served = f"served feed (import → client; the reader's pages: {pages})"
    table.add_row(served, f"{tally.hr():.4f}", f"{tally.ndcg():.4f}")
    table.add_row("bench/prequential.py's served row (its own run)", f"{prequential or float('nan'):.4f}", "")
    show(table, console)
    path = Table(title=f"The adopter path, wall clock (load average {load:.1f} on {os.cpu_count()} cores at its start)")
    path.add_column("step")
    path.add_column("seconds", justify="right")
    for step, seconds in [*steps.items(), ("import → first personalized feed", adopted_s)]:
        path.add_row(step, f"{seconds:.0f}")
    show(path, console)
    console.print(f"{len(events_of(tail)):,} tail events, {time.perf_counter() - started:.0f} s in all")
    if args.rounds is None:  # the command without --movielens: the data is MovieLens 100K wherever it lives
        record(
            {
                "adopt_hr10_served": figure(tally.hr(), "HR@10", COMMAND, baseline.hr()),
                "adopt_ndcg10_served": figure(tally.ndcg(), "nDCG@10", COMMAND, baseline.ndcg()),
                "adopt_import_to_feed_s": figure(adopted_s, "s", COMMAND),
            }
        )


if __name__ == "__main__":
    main()
