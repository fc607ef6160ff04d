"""OCR of scanned pages: word accuracy and pages/s, per render resolution and space boost.

    python -m bench.bench_ocr            # clean and noisy scans, 4 settings
    python -m bench.bench_ocr --quick    # clean and noisy scans, the default setting only

The pages are the known sentences of tests/scans.py drawn at 200 dpi, as clean
pages and as noisy ones (grey paper, speckles, blur, half a degree of skew), put
into image-only PDFs (Pillow stores them JPEG-compressed, as most scanners do),
and read by :func:`ingest.loaders.load_document` with the same :class:`~ingest.ocr.Ocr`
an ingest uses. Word accuracy is the share of the known words (repeats counted)
found among the OCR'd words. Wall time includes rendering and the engine's load;
CPU seconds per page are given too, because wall time on a shared machine depends
on its load (shown).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import resource
import statistics
import time
from dataclasses import dataclass

import ingest.ocr as ocr_module
from ingest.loaders import load_document
from ingest.ocr import Ocr
from tests.scans import SCANNED_PAGES, scanned_pdf, word_accuracy

# What OCR adds to the install: RapidOCR with its models, and what it needs that the app
# did not have already.
_OCR_DISTRIBUTIONS = (
    "rapidocr-onnxruntime",
    "opencv-python-headless",
    "pyclipper",
    "shapely",
    "six",
    "pypdfium2",
)
# (dpi, space boost): the default first, then what it was chosen against.
_SETTINGS = [(ocr_module.OCR_DPI, ocr_module._SPACE_BOOST), (200, 1.0), (150, 8.0), (150, 1.0)]


@dataclass
class _Run:
    label: str
    pages: int
    wall_s: float
    cpu_s: float
    accuracies: list[float]


def _read(label: str, data: bytes, dpi: int, boost: float) -> _Run:
    """OCR every page of ``data`` with a fresh engine at ``dpi`` and ``boost``."""
    ocr_module.OCR_DPI, ocr_module._SPACE_BOOST = dpi, boost  # read at render / engine load
    ocr = Ocr(seconds_per_file=3600)
    wall, cpu = time.perf_counter(), time.process_time()
    document = load_document("scan.pdf", data, ocr=ocr.for_file())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    found = {s.page: s.text for s in document.sections}
    accuracies = [word_accuracy(t, found.get(n, "")) for n, t in enumerate(SCANNED_PAGES, 1)]
    return _Run(label, ocr.stats.pages, wall, cpu, accuracies)


def installed_mb(distributions: tuple[str, ...] = _OCR_DISTRIBUTIONS) -> float:
    """The size on disk of the files of ``distributions``, in MB."""
    total = 0
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or ():
            path = file.locate()
            total += path.stat().st_size if path.is_file() else 0
    return total / 1e6


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the markdown section for RESULTS.md."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_ocr", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="the default setting only")
    args = parser.parse_args(argv)
    defaults = (ocr_module.OCR_DPI, ocr_module._SPACE_BOOST)
    scans = {"clean": scanned_pdf(SCANNED_PAGES), "noisy": scanned_pdf(SCANNED_PAGES, noisy=True)}
    load = os.getloadavg()[0]
    rows = []
    try:
        for dpi, boost in _SETTINGS[:1] if args.quick else _SETTINGS:
            for kind, data in scans.items():
                run = _read(kind, data, dpi, boost)
                rows.append((dpi, boost, run))
                print(f"{dpi} dpi, boost {boost:g}, {kind}: {run}", flush=True)
    finally:
        ocr_module.OCR_DPI, ocr_module._SPACE_BOOST = defaults
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _section(rows, load, peak_mb, defaults)


def _section(
    rows: list[tuple[int, float, _Run]], load: float, peak_mb: float, defaults: tuple[int, float]
) -> str:
    lines = [
        "## OCR of scanned pages (bench_ocr)",
        "",
        (
            f"{len(SCANNED_PAGES)} A4 pages of known sentences drawn at 200 dpi (tests/scans.py), "
            "in image-only PDFs, read through `load_document` with RapidOCR (PP-OCRv4, "
            f"rapidocr-onnxruntime 1.4.4). Load average at the start: {load:.1f} on 2 cores, "
            "so wall times are those of a busy machine; CPU s/page is steadier. Default: "
            f"{defaults[0]} dpi, space boost {defaults[1]:g}. Peak RSS of the whole run: "
            f"{peak_mb:.0f} MB (a new engine per row). OCR adds {installed_mb():.0f} MB to "
            "the install (RapidOCR and its models, headless OpenCV, pyclipper, shapely, six, "
            "pypdfium2)."
        ),
        "",
        (
            "| render dpi | space boost | scan | pages | pages/s (wall) | CPU s/page "
            "| word accuracy (mean / min) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for dpi, boost, run in rows:
        mark = " (default)" if (dpi, boost) == defaults else ""
        lines.append(
            f"| {dpi}{mark} | {boost:g} | {run.label} | {run.pages} | "
            f"{run.pages / run.wall_s:.2f} | "
            f"{run.cpu_s / max(run.pages, 1):.1f} | {statistics.mean(run.accuracies):.3f} / "
            f"{min(run.accuracies):.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
