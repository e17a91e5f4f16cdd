"""The `decnef` command line: the front door to every role."""
