"""DICOM ingest: watch an export folder, assemble complete volumes, publish them in order.

`watcher` (file events + polling), `series` (which series to follow), `sequencer` (strict
temporal order, duplicates, gaps), `streamer` (the loop, the journal-based restart, and
`run_streamer` for `decnef stream` / `decnef run`).
"""

from runtime.ingest.sequencer import Gap, Publish, Sequencer
from runtime.ingest.series import SeriesSelector
from runtime.ingest.streamer import STREAM, Streamer, StreamStats, run_streamer
from runtime.ingest.watcher import FolderWatcher

__all__ = [
    "STREAM",
    "FolderWatcher",
    "Gap",
    "Publish",
    "Sequencer",
    "SeriesSelector",
    "StreamStats",
    "Streamer",
    "run_streamer",
]
