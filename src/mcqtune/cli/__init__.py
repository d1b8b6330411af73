"""The ``mcqtune`` command line; the entry point is :func:`mcqtune.cli.main.main`."""
