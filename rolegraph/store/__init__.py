"""The trajectory store: runs, episodes and steps in SQLite (WAL) inside a run directory, and its exports."""

from rolegraph.store.db import STORE_FILE, Store
from rolegraph.store.export import FORMATS, ExportReport, build_rows, export_run, write_rows
from rolegraph.store.records import EpisodeRecord, Rewards, RunRecord, Step, TrainingRunRecord

__all__ = [
    "FORMATS",
    "STORE_FILE",
    "EpisodeRecord",
    "ExportReport",
    "Rewards",
    "RunRecord",
    "Step",
    "Store",
    "TrainingRunRecord",
    "build_rows",
    "export_run",
    "write_rows",
]
