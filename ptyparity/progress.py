"""What a training shows while it runs, the same in both backends.

A terminal gets the framework's live progress bar (Lightning's, Keras'); a pipe or a
file gets one line per epoch from :class:`EpochLines` instead, since a redrawn bar
written to a log is thousands of characters of carriage returns and escape codes.
"""

from __future__ import annotations

import sys
import time

from ptyparity.training import TrainHooks


def is_terminal(stream=None):
    """Whether ``stream`` (default ``sys.stdout``) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def epoch_line(epoch, max_epochs, metrics, seconds):
    """One epoch as one line: ``Epoch 3/8  train_loss … val_loss … train_deviance …
    val_deviance …  lr 0.001  4.2 s``.

    Parameters
    ----------
    epoch : int
        0-based; shown 1-based.
    max_epochs : int
    metrics : dict
        ``train_loss``, ``val_loss``, ``train_deviance``, ``val_deviance``,
        ``learning_rate`` (:meth:`ptyparity.training.TrainHooks.on_epoch_end`).
    seconds : float
        Wall time of the epoch, validation included.
    """
    values = "  ".join(f"{key} {metrics[key]:.6g}"
                       for key in ("train_loss", "val_loss", "train_deviance", "val_deviance"))
    return f"Epoch {epoch + 1}/{max_epochs}  {values}  lr {metrics['learning_rate']:.3g}  {seconds:.1f} s"


class EpochLines(TrainHooks):
    """Prints :func:`epoch_line` after every epoch (flushed, so a log shows progress
    as it happens), then forwards every call to ``hooks``.

    Parameters
    ----------
    hooks : TrainHooks
    max_epochs : int
    stream : file, optional
        Default ``sys.stdout`` at the time of each print.
    """

    def __init__(self, hooks, max_epochs, stream=None):
        self.hooks = hooks
        self.max_epochs = max_epochs
        self.stream = stream
        self._last = time.perf_counter()

    def on_step(self, step, metrics):
        self.hooks.on_step(step, metrics)

    def on_epoch_end(self, epoch, metrics):
        now = time.perf_counter()
        print(epoch_line(epoch, self.max_epochs, metrics, now - self._last),
              file=self.stream or sys.stdout, flush=True)
        self._last = now
        self.hooks.on_epoch_end(epoch, metrics)


def training_display(hooks, max_epochs, *, quiet):
    """How a fit shows its progress.

    Returns
    -------
    hooks : TrainHooks
        ``hooks``, wrapped in :class:`EpochLines` when stdout is not a terminal
        (and not ``quiet``).
    live_bar : bool
        Whether the backend should draw its framework's live progress bar (a
        terminal, not ``quiet``).
    """
    if quiet:
        return hooks, False
    if is_terminal():
        return hooks, True
    return EpochLines(hooks, max_epochs), False
