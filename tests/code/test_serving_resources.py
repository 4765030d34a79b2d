"""Model workers and torch threads of a served Bento, from the cores and the settings."""

from __future__ import annotations

import pytest

from serving.resources import WorkerPlan, plan_workers


@pytest.mark.parametrize(
    ("cores", "plan"),
    [
        (1, WorkerPlan(workers=1, threads=1)),
        (2, WorkerPlan(workers=1, threads=2)),
        (7, WorkerPlan(workers=1, threads=7)),
        (8, WorkerPlan(workers=2, threads=4)),
        (16, WorkerPlan(workers=4, threads=4)),
        (18, WorkerPlan(workers=4, threads=4)),
    ],
)
def test_workers_and_threads_follow_the_cores(cores: int, plan: WorkerPlan) -> None:
    assert plan_workers(cores) == plan


def test_settings_override_the_rule() -> None:
    assert plan_workers(16, workers=1) == WorkerPlan(workers=1, threads=16)
    assert plan_workers(2, workers=2) == WorkerPlan(workers=2, threads=1)
    assert plan_workers(16, threads=2) == WorkerPlan(workers=4, threads=2)
    assert plan_workers(4, workers=3, threads=6) == WorkerPlan(workers=3, threads=6)
    assert plan_workers(0) == WorkerPlan(workers=1, threads=1)  # never zero


def test_the_bento_records_the_worker_settings() -> None:
    from components.config import RatchetConfig
    from serving.build import serve_arguments

    config = RatchetConfig.model_validate({"serving": {"workers": 3, "num_threads": 2}})
    recorded = serve_arguments(config, "model:v1")

    assert (recorded["workers"], recorded["num_threads"]) == (3, 2)
    assert serve_arguments(RatchetConfig(), "model:v1")["workers"] is None


def test_the_bento_records_bentomls_per_request_observability_switches() -> None:
    """serving.access_log / serving.request_metrics become Bento arguments, which the
    service turns into BentoML's ``logging.access`` and ``metrics`` service options."""
    from components.config import RatchetConfig
    from serving.build import serve_arguments
    from serving.contract import ServeArgs

    config = RatchetConfig.model_validate(
        {"serving": {"access_log": True, "request_metrics": False}}
    )
    recorded = ServeArgs(**serve_arguments(config, "model:v1"))
    defaults = ServeArgs(**serve_arguments(RatchetConfig(), "model:v1"))

    assert (recorded.access_log, recorded.request_metrics) == (True, False)
    assert (defaults.access_log, defaults.request_metrics) == (False, True)
