"""The online engine: volumes in, DecNef scores out (METHOD.md §1.4, DESIGN.md).

`core` is the pure per-volume state machine, `scoring` the likelihood → score rule, `recovery`
rebuilds state after a crash, `process` adds sockets and files (`run_engine`, `decnef engine`).
"""

from runtime.engine.core import EngineCore, ScoreRecord, VolumeResult
from runtime.engine.scoring import Scorer, score_from_likelihood

__all__ = ["EngineCore", "ScoreRecord", "VolumeResult", "Scorer", "score_from_likelihood", "run_engine", "Engine"]


def __getattr__(name: str):
    if name in ("run_engine", "Engine", "EngineSummary", "load_decoder"):
        from runtime.engine import process

        return getattr(process, name)
    raise AttributeError(name)
