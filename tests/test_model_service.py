"""The model services' BentoML settings: their own time limit never cuts off the work of a
caller that may still wait for it (a job runs for JOB_TIMEOUT_S, longer than a request)."""

from __future__ import annotations

import pytest

from clip_service.settings import get_settings
from runners.model_service import model_service_config


@pytest.mark.parametrize(("request_s", "job_s"), [(600, 3600), (900, 60), (30, 30)])
def test_traffic_timeout_outlasts_requests_and_jobs(monkeypatch, request_s, job_s):
    monkeypatch.setenv("REQUEST_TIMEOUT_S", str(request_s))
    monkeypatch.setenv("JOB_TIMEOUT_S", str(job_s))
    get_settings.cache_clear()
    try:
        timeout = model_service_config("ClipEncoder", 1)["traffic"]["timeout"]
    finally:
        get_settings.cache_clear()
    assert timeout > max(request_s, job_s)
