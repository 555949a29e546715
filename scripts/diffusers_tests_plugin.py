"""pytest plugin: run diffusers' own scheduler tests against fastdiff's classes.

Loaded with ``-p diffusers_tests_plugin`` (scripts/ on PYTHONPATH) from a diffusers checkout. It
imports the installed diffusers (the one fastdiff's classes derive from) before diffusers'
tests/conftest.py puts the checkout's src/ on sys.path, and before the first test file is imported
it puts every class of fastdiff.schedulers into the ``diffusers``
namespace under its own name, so ``from diffusers import DDIMScheduler`` in a test file gives
fastdiff's class (whose base is diffusers' DDIMScheduler). A failure raising
``NotImplementedError("fastdiff: ...")`` is counted as a deliberate refusal. The summary line
``fastdiff-summary passed=.. failed=.. refused=.. skipped=..`` ends the run. FASTDIFF_NO_SWAP=1 runs
diffusers' own classes instead (what fails in this environment regardless of fastdiff).
"""

from __future__ import annotations

import os

import pytest

import diffusers  # noqa: E402,F401 - the installed package, before the checkout's conftest edits sys.path

_swapped = False
_counts = {"passed": 0, "failed": 0, "refused": 0, "skipped": 0}
_refused: list[str] = []


def _swap() -> None:
    global _swapped
    if _swapped or os.environ.get("FASTDIFF_NO_SWAP"):  # the baseline: diffusers' own classes
        return
    import diffusers

    import fastdiff.schedulers as fs

    for name in fs.__all__:
        cls = getattr(fs, name)
        if isinstance(cls, type) and isinstance(getattr(diffusers, name, None), type) and issubclass(cls, getattr(diffusers, name)):
            setattr(diffusers, name, cls)
    _swapped = True
    print(f"fastdiff-swapped {', '.join(sorted(n for n in fs.__all__ if getattr(diffusers, n, None) is getattr(fs, n)))}")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("test_"):
        _swap()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        if rep.skipped:
            _counts["skipped"] += 1
        elif rep.passed:
            _counts["passed"] += 1
        elif call.excinfo is not None and call.excinfo.errisinstance(NotImplementedError) and str(call.excinfo.value).startswith("fastdiff:"):
            _counts["refused"] += 1
            _refused.append(f"{item.nodeid}: {call.excinfo.value}")
        else:
            _counts["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    for line in _refused:
        terminalreporter.write_line(f"fastdiff-refused {line}")
    terminalreporter.write_line("fastdiff-summary " + " ".join(f"{k}={v}" for k, v in _counts.items()))
