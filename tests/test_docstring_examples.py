"""The examples in the library's docstrings run as written: they are how a reader at a
Python shell learns ``rag`` and ``ingest``, so a stale one misleads."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import ingest
import rag


def library_modules() -> list[str]:
    """Every module of ``rag`` and ``ingest`` but their command-line entry points."""
    return sorted(
        info.name
        for package in (rag, ingest)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        if not info.name.endswith(".__main__")
    )


def test_every_docstring_example_in_rag_and_ingest_gives_what_it_shows() -> None:
    failed, ran = {}, 0
    for name in library_modules():
        # Failures are printed, with the example and what it gave, to the captured output.
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        ran += result.attempted
        if result.failed:
            failed[name] = result.failed
    assert not failed, f"docstring examples that no longer hold, per module: {failed}"
    # Finding no modules (a renamed package) must not pass for every example holding.
    assert ran >= 40
