"""The supervisor's restart and stop policy (the cases are in supervisor_cases.py), run in a fresh interpreter.

The supervisor replaces the process's SIGINT/SIGTERM handlers and is stopped, as a service manager stops it,
by a SIGTERM to its own process. Run inside the suite's process after hundreds of other tests (decoder and
socket threads still about), that signal once ended the whole pytest process; in an interpreter of its own
it reaches only the supervisor under test.
"""

import subprocess
import sys

from tests.test_reliability import REPO


def test_restart_backoff_usage_errors_final_exits_and_stop_grace_hold_in_a_process_of_their_own():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/supervisor_cases.py"], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout, proc.stdout[-2000:]
