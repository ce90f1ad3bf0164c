"""Per-split watermarks combined into a source reader's watermark.

Flink's ``WatermarkOutputMultiplexer``: a reader that holds several splits
keeps one watermark per split and emits the minimum over its active splits.
One watermark from the maximum timestamp of a whole batch would run ahead of
the slowest split: after a restore at another parallelism a reader's splits sit
at different event times, and the lagging split's on-time records would arrive
behind the watermark and be dropped as late.
"""

from __future__ import annotations

from streamjob_runtime.operators import base


class WatermarkOutputMultiplexer:
    """The watermark of each split, and their combination.

    A split counts towards the combined watermark from :meth:`register` until
    :meth:`unregister` (it finished) and while it is not idle.  Per split and
    combined, watermarks only move forward.  With no active split the combined
    watermark holds where it is: a reader without data to judge by must not
    advance event time for the splits it may still be given.
    """

    def __init__(self) -> None:
        self._splits: dict[int, int] = {}
        self._idle: set[int] = set()
        self.combined = base.MIN_WATERMARK

    def register(self, split: int, watermark: int = base.MIN_WATERMARK) -> None:
        """Track ``split`` from ``watermark`` (its restored watermark, if any)."""
        self._splits[split] = max(watermark, self._splits.get(split, base.MIN_WATERMARK))

    def unregister(self, split: int) -> None:
        """``split`` has no more records: it no longer holds the others back."""
        self._splits.pop(split, None)
        self._idle.discard(split)

    def on_watermark(self, split: int, watermark: int) -> None:
        """The watermark of ``split`` moves to ``watermark`` (ignored if not forward)."""
        if watermark > self._splits.get(split, base.MAX_WATERMARK):
            self._splits[split] = watermark

    def mark_idle(self, split: int) -> None:
        if split in self._splits:
            self._idle.add(split)

    def mark_active(self, split: int) -> None:
        self._idle.discard(split)

    def split_watermark(self, split: int) -> int:
        """The watermark of ``split``; a split no longer tracked holds nothing back."""
        return self._splits.get(split, base.MAX_WATERMARK)

    def advance(self) -> int | None:
        """The new combined watermark if it moved forward, else None."""
        active = [wm for split, wm in self._splits.items() if split not in self._idle]
        if not active:
            return None
        low = min(active)
        if low <= self.combined:
            return None
        self.combined = low
        return low
