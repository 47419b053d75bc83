"""Bad inputs tried and clean errors, per surface: a pytest plugin (no conftest.py change needed).

Run it either way::

    python tests/harden_summary.py                  # the hardening modules, then the table
    python tests/harden_summary.py tests/ -q        # any pytest arguments (adds the existing modules' cases)
    python -m pytest -p tests.harden_summary tests/test_harden_*.py

The hardening tests (``tests/test_harden_*.py``) call ``record_property("harden", value)``:

* ``(surface, n)``: the test tried ``n`` bad inputs; all ``n`` got clean errors if it passed;
* ``(surface, tried, clean)``: a test that loops over inputs says how many got clean errors.

A strict xfail (a known gap, in code this change could not touch) counts as tried, not clean,
and is listed in the "known gaps" column.  Parametrized bad-input cases of the older test
modules are counted too, one per case, when those modules run (:data:`EXISTING`).  Other
``record_property`` values of the hardening tests (kill points, figures) are printed below
the table.
"""
from __future__ import annotations

import collections
import os
import re
import sys

#: (node id regex, surface) for the bad-input cases of the older test modules.
EXISTING = [
    (r"tests/test_preprocess\.py::test_bad_files\[", "images: bad files (test_preprocess)"),
    (r"tests/test_preprocess\.py::test_bad_values\[", "images: bad values (test_preprocess)"),
    (r"tests/test_data_mnist\.py::test_reader_rejects\[", "MNIST idx: bad files (test_data_mnist)"),
    (r"tests/test_data_mnist\.py::test_(bad_mirror_then_good|single_bad_mirror)\[",
     "MNIST download: bad mirrors (test_data_mnist)"),
    (r"tests/test_hub\.py::test_(flipped_byte|truncated_body|missing_file|repository_not_found|revision_not_found"
     r"|server_error|missing_hub_headers|connection_refused|stalled|offline_with_empty|corrupted_cached"
     r"|poisoned|unwritable|bundled_copy_with_wrong|user_path_missing)", "hub: faults (test_hub)"),
    (r"tests/test_training\.py::test_recipe_validation\[", "recipes: bad fields (test_training)"),
    (r"tests/test_training\.py::test_parse_ctx_errors\[", "contexts: bad specs (test_training)"),
    (r"tests/test_export\.py::test_unknown_operator_is_refused\[", "graphs: unsupported operators (test_export)"),
    (r"tests/test_cli_export\.py::test_bad_export_options\[", "CLI export: bad options (test_cli_export)"),
]

_counts = collections.OrderedDict()      # surface -> [tried, clean, known gaps]
_figures = []                            # (node id, name, value)
_failed = []


def _add(surface, tried, clean, gaps=0):
    row = _counts.setdefault(surface, [0, 0, 0])
    row[0] += tried
    row[1] += clean
    row[2] += gaps


def pytest_runtest_logreport(report):
    xfailed = hasattr(report, "wasxfail") and report.skipped
    if report.when != "call" and not (report.failed or xfailed):
        return
    props = [(k, v) for k, v in getattr(report, "user_properties", ()) if k == "harden"]
    if not props and report.when == "call":
        nodeid = report.nodeid.replace(os.sep, "/")
        for pattern, surface in EXISTING:
            if re.search(pattern, nodeid):
                props = [("harden", (surface, 1))]
                break
    for _, value in props:
        surface, tried, *clean = value
        if clean:
            _add(surface, tried, clean[0], tried - clean[0] if xfailed else 0)
        else:
            _add(surface, tried, tried if report.passed else 0, tried if xfailed else 0)
    if props and report.failed:
        _failed.append(report.nodeid)
    if report.when == "call":
        for k, v in getattr(report, "user_properties", ()):
            if k != "harden":
                _figures.append((report.nodeid, k, v))


def pytest_terminal_summary(terminalreporter):
    if not _counts:
        return
    w = terminalreporter
    w.section("hardening: bad inputs tried / clean errors")
    width = max(len(s) for s in _counts) + 2
    w.write_line(f"{'surface':<{width}}{'tried':>7}{'clean':>7}{'known gaps':>12}")
    totals = [0, 0, 0]
    for surface, (tried, clean, gaps) in _counts.items():
        w.write_line(f"{surface:<{width}}{tried:>7}{clean:>7}{gaps:>12}")
        totals = [a + b for a, b in zip(totals, (tried, clean, gaps))]
    w.write_line(f"{'total':<{width}}{totals[0]:>7}{totals[1]:>7}{totals[2]:>12}")
    w.write_line("known gaps: strict xfails in code this change does not own (see their reasons: pytest -rx)")
    if _failed:
        w.write_line(f"FAILED (not clean, not a known gap): {len(_failed)}")
        for n in _failed:
            w.write_line(f"  {n}")
    if _figures:
        w.write_line("")
        w.write_line("figures:")
        for nodeid, k, v in _figures:
            w.write_line(f"  {nodeid.split('::', 1)[-1]}: {k} = {v}")


def main(argv=None):
    import pytest
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(repo)
    args = list(sys.argv[1:] if argv is None else argv) or [
        "tests/test_harden_weights.py", "tests/test_harden_files.py", "tests/test_harden_training.py", "-q"]
    return pytest.main(args, plugins=[sys.modules[__name__]])


if __name__ == "__main__":
    sys.exit(main())
