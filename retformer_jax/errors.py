"""The two ways a run stops on purpose, and the exit statuses `main` gives them.

`UserError`: something the user can fix (a missing folder, an unprepared data set, a stale
checkpoint directory, a mistyped source). `main` prints its message as one line and exits with
EXIT_USAGE; `--verbose` (or RETFORMER_VERBOSE=1) shows the traceback as well.

`Preempted`: SIGTERM (TPU preemption, a SLURM time limit) reached a stage, which saved what it
could. `main` runs no later stage and exits with EXIT_PREEMPTED, the status launchers requeue on.
"""

from __future__ import annotations

EXIT_USAGE = 2
# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry".
EXIT_PREEMPTED = 75


class UserError(Exception):
  """A mistake in the inputs or the command; the message names the thing and the fix."""


class ConfigError(UserError, ValueError):
  """A config that cannot give a correct result (e.g. real data with the random demo CLIP)."""


class Preempted(Exception):
  """A stage stopped early because the job is being preempted; its work so far is saved."""

  def __init__(self, where: str):
    super().__init__(f"preempted at {where}; rerun the same command to resume.")
    self.where = where


def one_line(error: BaseException) -> str:
  """The message of `error` on one line (continuation lines joined with spaces)."""
  text = str(error) or type(error).__name__
  return " ".join(part.strip() for part in text.splitlines() if part.strip())
