"""Settings from environment and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml4paleo.config import Settings


def test_env_and_overrides():
    env = {
        "ML4PALEO_DATA": "/srv/scans",
        "ML4PALEO_PORT": "8080",
        "ML4PALEO_DASK_SCHEDULER": "tcp://10.0.0.1:8786",
        "ML4PALEO_SMTP_STARTTLS": "yes",
        "ML4PALEO_RETENTION_DAYS": "7.5",
    }
    s = Settings.from_env(env)
    assert s.data_dir == Path("/srv/scans") and s.jobs_dir == Path("/srv/scans/jobs")
    assert s.port == 8080 and s.dask_scheduler == "tcp://10.0.0.1:8786"
    assert s.smtp_starttls is True and s.retention_days == 7.5
    s2 = Settings.from_env(env, port=None, data_dir="/tmp/x")
    assert s2.port == 8080 and s2.data_dir == Path("/tmp/x")
    assert s2.with_overrides(port=1).port == 1


def test_bad_env_value_names_the_field():
    with pytest.raises(ValueError, match="port"):
        Settings.from_env({"ML4PALEO_PORT": "eighty"})
