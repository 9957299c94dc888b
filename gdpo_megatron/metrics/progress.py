"""Terminal progress: a live status line on a TTY, one plain line per step otherwise.

Plain ANSI rather than a full-screen library on purpose: Ray workers and vLLM print to
the same terminal, and a single redrawn line survives interleaved output (`log()` clears
it, prints, redraws) where a managed screen region gets garbled. Slurm logs and CI are
not TTYs, so they get complete lines they can grep.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Callable, Mapping, Sequence, TextIO

from .keys import REWARD_COMBINED, RESPONSE_LEN_MEAN, reward_components, reward_mean

_CLEAR_LINE = "\r\x1b[2K"


def format_duration(seconds: float) -> str:
    """Compact h/m/s: 59 -> '59s', 125 -> '2m05s', 3725 -> '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_number(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress_line(step: int, total: int, seconds_per_step: float | None,
                  metrics: Mapping[str, Any], extra_keys: Sequence[str] = (),
                  first_step_seconds: float | None = None) -> str:
    """`step 12/100 (12%) | 3.40 s/step | ETA 4m59s | combined 0.512 | format 0.9 | len 48.2`.

    Before a speed is known (the first step after a start or resume, which carries the
    start-up) the line shows that step's time instead of an ETA: `first step 46.0s`.
    """
    parts = [f"step {step}/{total} ({100 * step // max(total, 1)}%)"]
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
        parts.append(f"ETA {format_duration(seconds_per_step * max(total - step, 0))}")
    elif first_step_seconds is not None:
        parts.append(f"first step {first_step_seconds:.1f}s")
    if REWARD_COMBINED in metrics:
        parts.append(f"combined {_format_number(metrics[REWARD_COMBINED])}")
    for name in reward_components(metrics):
        parts.append(f"{name} {_format_number(metrics[reward_mean(name)])}")
    if RESPONSE_LEN_MEAN in metrics:
        parts.append(f"len {_format_number(metrics[RESPONSE_LEN_MEAN])}")
    for key in extra_keys:
        if key in metrics:
            parts.append(f"{key} {_format_number(metrics[key])}")
    return " | ".join(parts)


class StepRate:
    """Seconds per step from the last `window` steps, leaving out the first step after a (re)start.

    The first step pays for what happens once (engine compilation and warm-up, the first
    refit, a resume's checkpoint load); counting it made a 3-minute job show an ETA of an hour.
    """

    def __init__(self, start_step: int, now: float, window: int = 10) -> None:
        self._last = (start_step, now)
        self._recent: deque[float] = deque(maxlen=window)
        self.first_step_seconds: float | None = None

    def mark(self, step: int, now: float) -> None:
        last_step, last_time = self._last
        if step <= last_step:
            return  # another record of a step already timed
        per_step = (now - last_time) / (step - last_step)
        if self.first_step_seconds is None:
            self.first_step_seconds = per_step
        else:
            self._recent.extend([per_step] * min(step - last_step, self._recent.maxlen))
        self._last = (step, now)

    def seconds_per_step(self) -> float | None:
        return sum(self._recent) / len(self._recent) if self._recent else None


class ProgressDisplay:
    """`update(step, metrics)` after each step; `log(msg)` for messages; `close()` at the end."""

    def __init__(self, total_steps: int, *, mode: str = "auto", stream: TextIO | None = None,
                 extra_keys: Sequence[str] = (), start_step: int = 0, window: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("auto", "live", "plain", "off"):
            raise ValueError(f"progress mode must be auto, live, plain or off, got {mode!r}")
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "live" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.total_steps = total_steps
        self.extra_keys = tuple(extra_keys)
        self._clock = clock
        self.rate = StepRate(start_step, clock(), window)
        self._line = ""

    def seconds_per_step(self) -> float | None:
        return self.rate.seconds_per_step()

    def update(self, step: int, metrics: Mapping[str, Any]) -> str:
        self.rate.mark(step, self._clock())
        self._line = progress_line(step, self.total_steps, self.seconds_per_step(), metrics, self.extra_keys,
                                   first_step_seconds=self.rate.first_step_seconds)
        if self.mode == "live":
            self.stream.write(_CLEAR_LINE + self._line)
        elif self.mode == "plain":
            self.stream.write(self._line + "\n")
        self.stream.flush()
        return self._line

    def log(self, message: str) -> None:
        """Print a message without breaking the live line."""
        if self.mode == "live":
            self.stream.write(_CLEAR_LINE + message + "\n" + self._line)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "live" and self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = ""
