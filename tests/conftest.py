"""Shared test settings: a hypothesis profile sized for a 2-core CI machine; the CLI tests'
tiny complete run."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist each worker gets one core; alone, pytest may use both.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (the fused CPU optimiser paths take every leaf then),
    restoring the thread count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """``fctc train`` sets torch's thread count (config ``threads``); give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """The tiny recipe of ``tests/cli_helpers.py`` as a config file."""
    from cli_helpers import TINY, write_config

    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", TINY)


class RunOutput(tuple):
    """``(run folder, exit status, stdout)`` of a run, with what it logged as ``.stderr``."""

    stderr: str = ""


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, tiny_config):
    """A complete tiny run, shared by the CLI tests: ``(run folder, exit status, stdout)``,
    and its log (stderr) as ``straight_run.stderr``."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from fctc.cli import main

    out = tmp_path_factory.mktemp("runs") / "straight"
    buf, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with redirect_stdout(buf), redirect_stderr(err):
        rc = main(["train", "--config", str(tiny_config), "--out", str(out), "--no-progress"])
    torch.set_num_threads(threads)
    run = RunOutput((out, rc, buf.getvalue()))
    run.stderr = err.getvalue()
    return run
