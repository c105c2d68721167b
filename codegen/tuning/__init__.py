"""Kernel tuning: MetaSchedule against optc's default schedules, with a persistent database.

``tune`` (``tuner.py``) searches and records; ``TuningDatabase`` (``database.py``) holds the
records and the per-kernel verdicts; ``build(..., tuning=db)`` applies the kept ones.
"""

from .database import KernelEntry, TuningDatabase, TuningDatabaseError, target_key
from .tuner import TuneOptions, TuneReport, tune
from .workloads import bucket_label

__all__ = ["KernelEntry", "TuneOptions", "TuneReport", "TuningDatabase", "TuningDatabaseError", "bucket_label",
           "target_key", "tune"]
