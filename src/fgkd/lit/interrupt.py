"""Ctrl-C (SIGINT) as a request to stop at the next batch boundary, like Lightning treats SIGTERM.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be; when that is inside a finaliser or a
callback that runs from C, the interpreter prints "Exception ignored" and goes on, so a run under load could
ignore Ctrl-C and keep training (seen in CI). Here the first SIGINT only sets ``trainer.should_stop`` (Lightning
ends the fit after the current batch) and restores the previous handler, so a second Ctrl-C interrupts at once.
Installed for single-process fits in the main thread only (spawned DDP workers keep Lightning's handling).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lightning.pytorch as pl


@dataclass
class StopRequest:
    requested: bool = False


@contextmanager
def stop_on_ctrl_c(trainer: pl.Trainer) -> Iterator[StopRequest]:
    """Within the block, the first Ctrl-C asks ``trainer`` to stop; ``.requested`` tells the caller afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread() or trainer.world_size > 1:
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def ask_to_stop(signum, frame) -> None:  # noqa: ARG001 - the signal handler signature
        request.requested = True
        trainer.should_stop = True
        signal.signal(signal.SIGINT, previous)
        print("\nCtrl-C: stopping after the current batch (Ctrl-C again to interrupt at once)", flush=True)

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield request
    finally:
        if signal.getsignal(signal.SIGINT) is ask_to_stop:
            signal.signal(signal.SIGINT, previous)
