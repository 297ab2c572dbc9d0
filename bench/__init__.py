"""Benchmarks of braincap's hot paths against the libraries a user would otherwise pick.

Each ``bench/bench_<name>.py`` module has a ``main(argv=None)`` that parses its own
arguments, prints a table and returns its measurements. Run them with
``python -m bench`` (all, in turn) or ``python -m bench <name> [args...]`` (one).
"""
