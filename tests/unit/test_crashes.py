"""Reading an app process's death from its container's log (sandbox/crashes.py)."""

from __future__ import annotations

from sandbox import crashes

# What a uvicorn --reload worker's log looks like when the app raises at import: the
# reloader stays, multiprocessing prints the child's death and its traceback.
UVICORN_DIED = """\
INFO:     Will watch for changes in these directories: ['/app/ktrdr']
INFO:     Uvicorn running on http://0.0.0.0:5005 (Press CTRL+C to quit)
INFO:     Started reloader process [1] using WatchFiles
Process SpawnProcess-1:
Traceback (most recent call last):
  File "/usr/lib/python3.13/multiprocessing/process.py", line 313, in _bootstrap
    self.run()
  File "/app/ktrdr/training/training_worker.py", line 9, in <module>
    from ktrdr.training.metrics import collect
  File "/app/ktrdr/training/metrics.py", line 3, in <module>
    import sklearn
ModuleNotFoundError: No module named 'sklearn'
""".splitlines()


def test_a_uvicorn_child_that_died_at_import_is_a_crash_with_its_last_frame() -> None:
    crash = crashes.find_crash(UVICORN_DIED)
    assert crash == crashes.Crash(
        "ktrdr/training/metrics.py:3 in <module>",
        "ModuleNotFoundError: No module named 'sklearn'",
    )
    assert crash.describe() == (
        "process died: ModuleNotFoundError: No module named 'sklearn' "
        "(ktrdr/training/metrics.py:3 in <module>)"
    )


def test_a_restart_after_the_death_is_no_crash() -> None:
    edited = [
        *UVICORN_DIED,
        "WARNING:  WatchFiles detected changes in 'ktrdr/training/metrics.py'. Reloading...",
        "INFO:     Started server process [42]",
        "INFO:     Waiting for application startup.",
    ]
    assert crashes.find_crash(edited) is None


def test_a_second_death_after_a_restart_is_the_one_reported() -> None:
    again = [
        *UVICORN_DIED,
        "INFO:     Started server process [42]",
        "Process SpawnProcess-2:",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/training/training_worker.py", line 2, in <module>',
        "    raise RuntimeError('still broken')",
        "RuntimeError: still broken",
    ]
    crash = crashes.find_crash(again)
    assert crash == crashes.Crash(
        "ktrdr/training/training_worker.py:2 in <module>", "RuntimeError: still broken"
    )


def test_a_traceback_the_app_logged_and_survived_is_no_crash() -> None:
    handled = [
        "INFO:     Started server process [7]",
        "ERROR registration failed",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/workers/base.py", line 50, in register_once',
        "httpx.ConnectError: All connection attempts failed",
        "INFO:     Application startup complete.",
    ]
    assert crashes.find_crash(handled) is None
    assert crashes.find_crash(handled[:4]) is None  # no death mark: the process lives


def test_our_reloader_reports_the_death_after_the_traceback() -> None:
    lines = [
        "reloader: watching /app/ktrdr_reference; started python3 -m x (pid 8)",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr_reference/worker.py", line 4, in <module>',
        "ValueError: bad",
        "reloader: pid 8 exited with status 1: waiting for an edit",
    ]
    assert crashes.find_crash(lines) == crashes.Crash(
        "ktrdr_reference/worker.py:4 in <module>", "ValueError: bad"
    )
    restarted = [*lines, "reloader: 1 file(s) changed (worker.py...): restarting"]
    assert crashes.find_crash(restarted) is None


def test_a_death_without_a_traceback_quotes_the_mark() -> None:
    lines = ["reloader: pid 8 exited with status -9: waiting for an edit"]
    assert crashes.find_crash(lines) == crashes.Crash(
        "", "reloader: pid 8 exited with status -9: waiting for an edit"
    )


def test_streams_are_merged_by_timestamp() -> None:
    stdout = "2026-12-03T06:00:01.5Z INFO started\n2026-12-03T06:00:03Z INFO later\n"
    stderr = "2026-12-03T06:00:02.123456789Z Process SpawnProcess-1:\nno stamp\n"
    assert crashes.merge_streams(stdout, stderr) == [
        "INFO started",
        "Process SpawnProcess-1:",
        "INFO later",
        "no stamp",
    ]


def test_the_last_traceback_of_an_exited_process_is_its_error() -> None:
    lines = [
        "INFO:     Started server process [1]",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/api/main.py", line 5, in <module>',
        "KeyError: 'x'",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/api/main.py", line 9, in <module>',
        "ValueError: the last one",
    ]
    assert crashes.last_error(lines) == crashes.Crash(
        "ktrdr/api/main.py:9 in <module>", "ValueError: the last one"
    )
    # No traceback at its end: its last line is what it said last.
    assert crashes.last_error(["INFO: bye", ""]) == crashes.Crash("", "INFO: bye")
    assert crashes.last_error([]) is None


def test_a_handled_traceback_before_an_exit_is_not_blamed_for_it() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/workers/base.py", line 50, in register_once',
        "httpx.ConnectError: All connection attempts failed",
        "INFO registered with the backend",
        "Killed",
    ]
    assert crashes.last_error(lines) == crashes.Crash("", "Killed")


def test_uvicorns_own_exits_without_a_traceback_are_deaths() -> None:
    startup = [
        "INFO:     Started server process [9]",
        "INFO:     Waiting for application startup.",
        "ERROR:    Application startup failed. Exiting.",
    ]
    crash = crashes.find_crash(startup)
    assert crash == crashes.Crash("", "ERROR: Application startup failed. Exiting.")
    loading = ['ERROR:    Error loading ASGI app. Could not import module "ktrdr.api.x".']
    assert crashes.find_crash(loading) is not None


def test_a_process_of_the_apps_own_that_died_while_it_serves_is_no_crash() -> None:
    lines = [
        "INFO:     Application startup complete.",
        "Process SpawnProcess-3:",
        "Traceback (most recent call last):",
        '  File "/app/ktrdr/jobs/pool.py", line 8, in run',
        "ValueError: a job failed",
        'INFO:     127.0.0.1:4242 - "GET /api/v1/health HTTP/1.1" 200 OK',
    ]
    assert crashes.find_crash(lines) is None


def test_a_container_started_again_is_not_its_old_death() -> None:
    lines = [
        "reloader: pid 8 exited with status 1: waiting for an edit",
        "reloader: watching /app/ktrdr_reference; started python3 -m x (pid 8)",
    ]
    assert crashes.find_crash(lines) is None
