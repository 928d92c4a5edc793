"""Exit codes and the errors of a training run: the one home of both.

``python -m train`` (train/__main__.py) turns each error below into one ``error: ...`` line on
stderr and its exit code; every message says what happened and what to do. Importable without
jax (the command line checks arguments before it imports jax).

=====  ==============================================================================
code   meaning
=====  ==============================================================================
0      the run completed (summary.json written)
1      the training diverged: a NaN/Inf loss, a loss above ``divergence_loss``, or an
       update that made the weights / optimizer state non-finite; no checkpoint with
       non-finite numbers is written, checkpoints from after the divergence began are
       moved to ``workdir/diverged_checkpoints``, the last good one is kept
2      bad arguments, config value or dataset folder (nothing was written)
3      the workdir is unusable: a file in its place, not writable
4      a write failed during the run (disk full, I/O error); the last complete checkpoint
       is kept, nothing after it was written
5      the workdir holds a different run (other model, or changed settings without
       ``--config.allow_config_change=True``)
70     an unexpected internal error (a bug); its traceback is printed
130    stopped by Ctrl-C (SIGINT); a checkpoint of the current step was written
143    stopped by SIGTERM; a checkpoint of the current step was written
=====  ==============================================================================
"""

from __future__ import annotations

import os
import re

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_WORKDIR = 3
EXIT_WRITE_FAILED = 4
EXIT_WORKDIR_MISMATCH = 5
EXIT_INTERNAL = 70  # EX_SOFTWARE: an unexpected exception (a bug); its traceback is printed
EXIT_SIGINT = 130  # 128 + SIGINT, the shell convention
EXIT_SIGTERM = 143  # 128 + SIGTERM

EXIT_CODES = {
    EXIT_OK: "completed",
    EXIT_DIVERGED: "training diverged (NaN/Inf or too large a loss, non-finite state); last "
                   "good checkpoint kept",
    EXIT_BAD_INPUT: "bad arguments, config value or dataset folder",
    EXIT_WORKDIR: "workdir unusable (a file in its place, not writable)",
    EXIT_WRITE_FAILED: "a write failed during the run (disk full, I/O error); last complete "
                       "checkpoint kept",
    EXIT_WORKDIR_MISMATCH: "workdir holds a different run (other model or changed settings)",
    EXIT_INTERNAL: "internal error (a bug; its traceback is printed)",
    EXIT_SIGINT: "stopped by Ctrl-C; checkpoint of the current step written",
    EXIT_SIGTERM: "stopped by SIGTERM; checkpoint of the current step written",
}


def failure_reason(error: BaseException) -> str:
    """A short reason for a failed write: the OS error text when there is one."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} [errno {error.errno}]"
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
        code = int(match.group(1))
        return f"{os.strerror(code)} [errno {code}]"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first[:200]


class TrainError(Exception):
    """Base of the run's errors; ``exit_code`` is what ``python -m train`` exits with."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteLossError(TrainError, RuntimeError):
    """The training diverged: a NaN/Inf loss, a loss above ``divergence_loss``, or an update
    that made the state non-finite. Carries the step, the loss and the last good checkpoint.

    Args:
      step: the step whose loss (or update) showed the divergence.
      loss: that step's training loss.
      last_checkpoint: the newest checkpoint that does not lead to it (None if there is none).
      workdir: the run's folder.
      what: "loss" (NaN/Inf loss), "large loss" (above ``threshold``), or the name of the
        part of the state that the update made non-finite.
      moved: checkpoints written after the divergence began, moved to
        ``workdir/diverged_checkpoints`` so that a rerun resumes from ``last_checkpoint``.
      threshold: the ``divergence_loss`` in force.
    """

    exit_code = EXIT_DIVERGED

    def __init__(self, step: int, loss: float, last_checkpoint: int | None, workdir: str,
                 what: str = "loss", moved: tuple[int, ...] = (), threshold: float | None = None):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        self.moved = tuple(moved)
        if what == "loss":
            head = f"non-finite training loss {loss} at step {step}"
        elif what == "large loss":
            head = (f"training loss {loss:.4g} at step {step} is above divergence_loss="
                    f"{threshold:.3g}: the training diverged")
        else:
            head = (f"the update of step {step} made the {what} non-finite (loss {loss:.4g}): "
                    "the training diverged")
        if self.moved:
            head += (f"; checkpoint(s) {', '.join(map(str, self.moved))}, written after the "
                     f"divergence began, were moved to {workdir}/diverged_checkpoints")
        if last_checkpoint is not None:
            where = (f"the last good checkpoint is step {last_checkpoint} in {workdir}/checkpoints"
                     f" (to resume from it with a lower rate, rerun the same command with e.g. "
                     f"--config.learning_rate=LOWER --config.allow_config_change=True)")
        else:
            where = ("no good checkpoint was written before it (rerun the same command with a "
                     "lower --config.learning_rate: it starts from step 0)")
        super().__init__(f"{head}; {where}")


class WorkdirError(TrainError):
    """The workdir cannot be used (a file in its place, no write permission)."""

    exit_code = EXIT_WORKDIR


class WriteFailedError(TrainError):
    """Writing a checkpoint or a record failed mid-run (disk full, I/O error)."""

    exit_code = EXIT_WRITE_FAILED


class WorkdirMismatchError(TrainError):
    """The workdir holds a run of another model, or of other settings (resume refused)."""

    exit_code = EXIT_WORKDIR_MISMATCH


class Interrupted(TrainError):
    """SIGINT / SIGTERM stopped the run after writing a checkpoint of the current step."""

    def __init__(self, signum: int, message: str):
        import signal  # noqa: PLC0415

        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        super().__init__(message)
