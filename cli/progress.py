"""Progress bars on stderr for long calls, fed by the daemon's progress events."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress, TaskID

    from p2pshare.proto.control import Event

# Below this many bytes a bar would only flicker.
MIN_BYTES_FOR_BAR = 64 << 20


class ByteProgress:
    """A bar driven by ``{"done", "total"}`` events; silent when not wanted or not a TTY."""

    def __init__(
        self, description: str, *, enabled: bool, min_bytes: int = MIN_BYTES_FOR_BAR
    ) -> None:
        self._description = description
        self._enabled = enabled and sys.stderr.isatty()
        self._min_bytes = min_bytes
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_event(self, event: Event) -> None:
        if not self._enabled or event.event != "progress":
            return
        done, total = event.data.get("done"), event.data.get("total")
        if not isinstance(done, int) or not isinstance(total, int):
            return
        if self._progress is None:
            if total < self._min_bytes:
                return
            self._start(total)
        assert self._progress is not None
        assert self._task is not None
        peers = event.data.get("peers")
        description = self._description if peers is None else f"{self._description} ({peers} peers)"
        self._progress.update(self._task, completed=done, total=total, description=description)

    def _start(self, total: int) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich costs ~50 ms to import
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=total)

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
