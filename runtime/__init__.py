"""decnef runtime: ingest, realignment, engine, transport and the `decnef` command line."""

__version__ = "0.1.0"
