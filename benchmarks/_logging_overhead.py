"""The inference log's cost (issue 22): one Bento served with the log off and on, in rounds.

``serve_load.py --logging-rounds N`` starts the Bento twice per round: once with the log off
(``monitor.exporter: off``) and once on (the file exporter into a fresh temporary state
folder), the order alternating per round (off/on, on/off, ...) so a machine that drifts
(thermal, other load) weighs on both sides alike. Each server gets the same warm-up and the
same single-sentence SST-2 requests at one concurrency level (the highest of ``--levels``,
default 32). Prints req/s per server, the on/off ratio per round, the median ratio over the
rounds (the issue asks for a drop of at most 5%), and the number of records each logged
server wrote (read back with ``components/traffic.py``) against the texts it was sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALLOWED_DROP = 0.05  # issue 22: the concurrency-32 figure drops by at most 5% with the log on
OFF, ON = "off", "on"


@dataclass(frozen=True)
class OverheadRound:
    """One round: requests/s with the log off and on, and what the logged server wrote."""

    off_rps: float
    on_rps: float
    records: int

    @property
    def ratio(self) -> float:
        return self.on_rps / self.off_rps


def round_order(index: int) -> tuple[str, str]:
    """Which server runs first in round ``index`` (0-based): off first in even rounds."""
    return (OFF, ON) if index % 2 == 0 else (ON, OFF)


def median_ratio(rounds: Sequence[OverheadRound]) -> float:
    """The median over the rounds of on/off requests/s.

    Raises:
        ValueError: no rounds, or a round whose log-off server answered nothing (no ratio).
    """
    if not rounds:
        raise ValueError("no rounds to compare: --logging-rounds must be at least 1")
    if any(one.off_rps <= 0 for one in rounds):
        raise ValueError("a log-off server answered no request: no on/off ratio")
    return statistics.median(one.ratio for one in rounds)


def verdict(ratio: float) -> str:
    """The median ratio as a drop in percent, against the issue's 5%."""
    drop = 1 - ratio
    within = "within" if drop <= ALLOWED_DROP else "OVER"
    return (
        f"median on/off = {ratio:.3f} (drop {drop:+.1%}; {within} the {ALLOWED_DROP:.0%} allowed)"
    )


def traffic_environment(state: Path, exporter: str) -> dict[str, str]:
    """``RATCHET_TRAFFIC_LOG`` for a server logging into ``state`` with ``exporter``
    (``ratchet serve`` keeps a value already set: cli/serving.py ``serve_environment``)."""
    from components.text_features import FEEDBACK_DIR_NAME, FEEDBACK_FILE_NAME, TRAFFIC_DIR_NAME
    from serving.traffic_log import TRAFFIC_ENV, TrafficSettings

    settings = TrafficSettings(
        log_dir=str(state / TRAFFIC_DIR_NAME),
        exporter=exporter,
        feedback_file=str(state / FEEDBACK_DIR_NAME / FEEDBACK_FILE_NAME),
    )
    return {TRAFFIC_ENV: json.dumps(asdict(settings))}


def logged_records(state: Path) -> int:
    """The records the server wrote into ``state``'s inference log (one per text)."""
    from components.text_features import TRAFFIC_DIR_NAME
    from components.traffic import read_traffic

    return len(read_traffic(state / TRAFFIC_DIR_NAME, since=0))


def run_rounds(
    rounds: int,
    scratch: Path,
    env: dict[str, str],
    serve: Callable[[str, dict[str, str]], float],
    texts: int,
) -> list[OverheadRound]:
    """``rounds`` alternating off/on pairs; ``serve(name, env)`` starts the Bento with ``env``,
    drives it and stops it, returning its requests/s; ``texts``: how many it is sent (the
    records a logged server should write)."""
    found = []
    for index in range(rounds):
        rps: dict[str, float] = {}
        state = scratch / f"round-{index + 1}"
        for mode in round_order(index):
            exporter = "file" if mode == ON else "off"
            server_env = {**env, **traffic_environment(state / mode, exporter)}
            rps[mode] = serve(f"r{index + 1}-log-{mode}", server_env)
        one = OverheadRound(rps[OFF], rps[ON], logged_records(state / ON))
        print(
            f"round {index + 1}: off {one.off_rps:7.1f} req/s  on {one.on_rps:7.1f} req/s  "
            f"on/off {one.ratio:.3f}  records logged {one.records}/{texts}",
            flush=True,
        )
        found.append(one)
    return found


def logging_overhead(
    name: str,
    tag: str,
    env: dict[str, str],
    options: argparse.Namespace,
    serve_bento: Callable[[str, str, dict[str, str], argparse.Namespace], list[Any]],
) -> None:
    """The inference log's cost on the Bento ``tag``: alternating off/on rounds at the
    highest level of ``options.levels``; ``serve_bento(name, tag, env, plan)`` is
    ``serve_load.py``'s (its results' ``rps``)."""
    plan = argparse.Namespace(**{**vars(options), "levels": [max(options.levels)]})
    print(
        f"inference log off/on: {name}={tag}, c={plan.levels[0]}, "
        f"{options.logging_rounds} round(s), {len(plan.sentences)} requests per server "
        f"after {plan.warmup} warm-up ones",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="serve-load-log-") as scratch:
        rounds = run_rounds(
            options.logging_rounds,
            Path(scratch),
            env,
            lambda server, server_env: serve_bento(server, tag, server_env, plan)[0].rps,
            min(plan.warmup, len(plan.sentences)) + len(plan.sentences),
        )
    print(verdict(median_ratio(rounds)))
