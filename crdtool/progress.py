"""Progress of long loops (distill, search) for people and for logs.

On a terminal: a rich bar. Piped or logged (no terminal): a plain line at the start, every
``interval`` seconds and at the end, in the style of tqdm's non-tty output, so a log shows that the
run is alive. The rate is the average over the steps done in this process, never a momentary one.
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

PLAIN_INTERVAL_S = 30.0


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return (f"{h}:" if h else "") + f"{rest // 60:02d}:{rest % 60:02d}"


class StepProgress:
    """``with StepProgress(console, "distill", total) as p: p.update(step, info="...")``.

    Nothing is shown before the first ``update``, so an error raised while a run is being prepared
    is not preceded by an empty 0/N bar. ``footer`` is a second line (the bar's detail) a caller may set.
    """

    def __init__(self, console: Console, description: str, total: int, interval: float | None = None):
        self.console, self.description, self.total = console, description, total
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.footer = ""
        self._bar: Progress | None = None
        self._live: Live | None = None
        self._task = None
        self._start_step: int | None = None
        self._t0 = 0.0
        self._last_plain = 0.0
        self._last_plain_step: int | None = None
        self._step = 0
        self._info = ""

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Average steps per second since the first update in this process."""
        if self._start_step is None:
            return 0.0
        return (self._step - self._start_step) / max(time.monotonic() - self._t0, 1e-9)

    def _eta(self) -> str:
        r = self.rate
        return _clock((self.total - self._step) / r) if r > 0 else "?"

    def update(self, step: int, info: str = "") -> None:
        now = time.monotonic()
        self._step, self._info = step, info
        if self._start_step is None:
            self._start_step, self._t0 = step, now
            if self.console.is_terminal:
                self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[info]}"), console=self.console)
                self._task = self._bar.add_task(self.description, total=self.total, rate="", info="")
                self._live = Live(Group(self._bar, _Footer(self)), console=self.console, refresh_per_second=4)
                self._live.start()
            else:
                self._plain_line(now)
        if self._bar is not None:
            rate = f"{self.rate:.1f} it/s" if step > self._start_step else ""
            self._bar.update(self._task, completed=step, rate=rate, info=info)
        elif now - self._last_plain >= self.interval:
            self._plain_line(now)

    def _plain_line(self, now: float) -> None:
        self._last_plain, self._last_plain_step = now, self._step
        pct = 100 * self._step / max(self.total, 1)
        rate = f"{self.rate:.2f} it/s" if self._step > (self._start_step or 0) else "? it/s"
        line = (f"{self.description}: {pct:3.0f}% {self._step}/{self.total} "
                f"[{_clock(now - self._t0)}<{self._eta()}, {rate}]")
        extra = " ".join(x for x in (self._info, self.footer) if x)
        self.console.print(line + (f" {extra}" if extra else ""), markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the bar, or print the final plain line (once)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._start_step is not None and self._bar is None and self._step != self._last_plain_step:
            self._plain_line(time.monotonic())


class _Footer:
    def __init__(self, progress: StepProgress):
        self.progress = progress

    def __rich__(self) -> Text:
        return Text(f"  {self.progress.footer}" if self.progress.footer else "", style="dim", overflow="fold")
