"""DataLoader worker set-up shared by the runners."""

from __future__ import annotations

import os
import signal


def leave_signals_to_main(_worker_id: int) -> None:
    """Workers ignore the scheduler's checkpoint signal (USR2, or $SUBMITIT_PREEMPT_SIGNAL).

    SLURM signals every process of a job step, and a forked worker inherits the main process's Python handler:
    without this, each worker would run submitit's checkpoint-and-requeue itself and then die, so the main
    process would see a crashed worker instead of saving its state and requeueing once.
    """
    names = {"SIGUSR2", os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "SIGUSR2")}
    for name in names:
        sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
