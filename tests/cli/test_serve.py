"""Process-wide settings every broker process starts with (cli/serve.py)."""

from __future__ import annotations

import gc
import subprocess
import sys

from cli.serve import GC_THRESHOLDS
from tests.procs import ROOT


def test_a_broker_process_collects_cyclic_garbage_less_often_than_python_by_default() -> None:
    """The CLI's entry sets the thresholds before it runs any command (here one that
    fails at once: its config file does not exist)."""
    probe = (
        "import gc, sys\n"
        "from cli import main\n"
        "try:\n"
        "    main.main(['chat', '-c', '/nonexistent/promptbus.yaml', 'hi'])\n"
        "except BaseException:\n"
        "    pass\n"
        "print(gc.get_threshold())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == str(GC_THRESHOLDS), out.stderr
    assert gc.get_threshold() != GC_THRESHOLDS  # this process (pytest) is left alone
    assert GC_THRESHOLDS[0] > 700  # Python's own young-generation threshold
