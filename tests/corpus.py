"""A small realistic corpus for retrieval tests: a fictional kayak maker's documents.

:func:`build_corpus` writes into a folder an employee handbook (Markdown), an
expense policy (plain text), an IT security policy (HTML), an onboarding
checklist (.docx, with a space in its name) and a six-page owner's manual
(PDF built with fpdf2, one topic per page, so page numbers are testable).
``tests/qa/corpus.jsonl`` holds questions whose answers are in these files.

:func:`index_folder` fills a store from a folder with the project's own
loaders, chunker and embedder, then saves the BM25 index and bumps the store
generation, which is what an ingest run leaves behind (tests use it to play a
writer in another process, or one that died before rebuilding BM25).

The stores built from docs/ and from this corpus are fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rag.settings import Settings

HANDBOOK = """\
# Brightwater Kayaks employee handbook

Welcome to Brightwater Kayaks. We design and build sea kayaks in our workshop in
Port Alder and sell them through 40 dealers. This handbook covers how we work together.

## Working hours

Core hours are 10:00 to 15:00 from Monday to Thursday; outside them you plan your own day.
Fridays are meeting-free. Workshop staff work in two shifts, 06:30-14:30 and 13:00-21:00,
and swap shifts through the rota board in the canteen, never by private arrangement.

## Holidays and leave

Everyone gets 28 days of paid holiday a year plus the public holidays of the region.
Up to five unused days carry over into the first quarter of the next year; the rest
lapse on 31 March. Book holidays in the HR portal at least two weeks ahead, and at least
six weeks ahead for the summer peak between June and August.

Parental leave is 20 weeks at full pay for every parent, taken within two years of the
birth or adoption.

## Sick days

If you are ill, tell your team lead before 09:00 by phone or chat. From the fourth
consecutive sick day we need a doctor's note. Sick days never reduce your holiday.

## Remote work

Office staff may work from home up to three days a week. The workshop cannot be run
remotely, so workshop staff receive a monthly well-being allowance of 60 EUR instead.
Working from abroad is allowed for up to 20 working days a year after HR confirms it.

## Learning budget

Every employee has 1,200 EUR a year for courses, books and conferences, plus two
learning days. Ask your team lead; anything under 200 EUR needs no approval.

## Staff discount

Employees buy our kayaks at cost price, one boat every two years, and accessories
at 40 percent off in the factory shop.
"""

EXPENSES = """\
BRIGHTWATER KAYAKS - TRAVEL AND EXPENSE POLICY
Version 3.2, owner: finance team

1. BOOKING TRAVEL
Book train journeys under six hours instead of flights. Flights are economy class;
premium economy is allowed for flights longer than eight hours. Book through the
travel desk (travel@brightwater.example) at least ten days ahead where possible.

2. HOTELS
The nightly limit is 140 EUR in most cities and 190 EUR in London, Paris, Zurich
and New York. Breakfast may be included in the room rate.

3. MEALS
A daily meal allowance of 45 EUR covers all meals on travel days. Alcohol is not
reimbursed, except for one drink per person at a customer dinner approved in advance.

4. MILEAGE
Driving your own car for business pays 0.30 EUR per kilometre. Parking and tolls are
reimbursed with receipts. Fines are never reimbursed.

5. SUBMITTING EXPENSES
Submit expenses in the Ledgerly app within 30 days of the trip with photos of every
receipt over 10 EUR. Your team lead approves within five working days and the money
arrives with the next salary payment. Lost receipts need a signed note explaining
the amount and purpose.

6. COMPANY CARDS
Staff who travel more than six times a year may request a company credit card from
finance. Personal purchases on the card are not allowed, not even if paid back.
"""

SECURITY_HTML = """\
<!DOCTYPE html>
<html><head><title>IT security policy</title></head>
<body>
<header><nav>Intranet | HR | IT | Finance</nav></header>
<main>
<h1>IT security policy</h1>
<h2>Passwords and sign-in</h2>
<p>Use the company password manager (Keyvault) for every work account. Passwords must
have at least 14 characters. Two-factor sign-in with the authenticator app is mandatory
for email, the HR portal and the dealer system.</p>
<h2>Laptops and phones</h2>
<p>Laptops lock automatically after five minutes without use and their disks are
encrypted. Never leave a laptop in a car. A lost or stolen device must be reported to
the IT helpdesk within one hour, day or night, on +49 40 555 0199, so we can wipe it
remotely.</p>
<h2>Phishing</h2>
<p>If an email asks for your password or urgent payment, do not click anything. Use the
"Report phish" button in the mail client; the security team answers within a day.</p>
<h2>Customer data</h2>
<p>Customer addresses and orders stay in the dealer system. Do not export customer data
to spreadsheets or personal cloud storage. Data requests from customers go to
privacy@brightwater.example and are answered within 30 days.</p>
</main>
<footer>Questions: it-help@brightwater.example</footer>
</body></html>
"""

ONBOARDING_DOCX: list[tuple[str, str]] = [
    ("heading", "Onboarding checklist"),
    ("para", "Your team lead sends you this checklist a week before your first day."),
    ("heading", "First day"),
    ("para", "Collect your badge and laptop at reception from 08:30. Your buddy, a colleague "
     "from another team, shows you the workshop, the canteen and the safety exits."),
    ("heading", "First week"),
    ("para", "Complete the workshop safety induction, which is required before you may enter "
     "the production hall, and the data-protection e-learning in the HR portal."),
    ("heading", "First month"),
    ("para", "Paddle one of our kayaks on the Alder river with the test team, and agree your "
     "goals for the probation period of six months with your team lead."),
]

# Owner's manual: one topic per page; QA questions name the page they need.
MANUAL_PAGES: list[tuple[str, str]] = [
    (
        "Welcome and specifications",
        "The Tidewater 12 is a stable touring kayak for lakes and sheltered coasts. Length "
        "3.66 m, width 66 cm, weight 22 kg, maximum load 130 kg including paddler and gear. "
        "The hull is rotomoulded polyethylene; the two hatches hold 60 litres of luggage.",
    ),
    (
        "Fitting the seat and footrests",
        "Slide the seat into the rails until it clicks, then adjust the backrest strap so that "
        "you sit upright. Footrests move on sliding tracks: pull the lever, push the pedal to the "
        "position where your knees touch the deck lightly, and release the lever.",
    ),
    (
        "Skeg and steering",
        "The retractable skeg keeps the kayak on course in crosswind. Lower it with the slider "
        "next to the seat. Raise the skeg before landing on a beach or in shallow water, or the "
        "blade and its cable can bend.",
    ),
    (
        "Safety on the water",
        "Always wear a buoyancy aid. Carry a bilge pump and a paddle float, and practise a "
        "self-rescue in calm water before your first trip. Do not paddle alone in water colder "
        "than 15 degrees Celsius, and check the wind forecast: turn back above force 4.",
    ),
    (
        "Cleaning and storage",
        "Rinse the kayak with fresh water after every trip in salt water. Store it on its side "
        "or upside down on padded racks, out of direct sunlight, because UV light makes the "
        "plastic brittle. Never store it resting on the hull centre for weeks, which dents it.",
    ),
    (
        "Warranty and service",
        "The hull carries a five-year warranty against manufacturing defects; fittings and "
        "the skeg are covered for two years. Register the kayak within 30 days of purchase at "
        "brightwater.example/register. Scratches on the hull are normal wear, not defects.",
    ),
]


def _build_manual(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(auto=False)
    for title, body in MANUAL_PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        title_line = f"Tidewater 12 owner's manual - {title}"
        pdf.multi_cell(0, 10, title_line, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def _build_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    for kind, text in ONBOARDING_DOCX:
        if kind == "heading":
            document.add_heading(text, level=1)
        else:
            document.add_paragraph(text)
    document.save(str(path))


def build_corpus(folder: Path) -> Path:
    """Write the Brightwater Kayaks corpus into ``folder`` (created if needed); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    policies = folder / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "expenses.txt").write_text(EXPENSES, encoding="utf-8")
    (policies / "security.html").write_text(SECURITY_HTML, encoding="utf-8")
    _build_docx(folder / "onboarding checklist.docx")
    _build_manual(folder / "tidewater-12-manual.pdf")
    return folder


def index_folder(
    settings: Settings, folder: Path | None = None, *, rebuild_bm25: bool = True
) -> int:
    """Load, chunk, embed and store every file under ``folder`` (default the docs dir).

    Returns the number of chunks stored. Leaves a bumped generation and a saved
    BM25 index, like a finished ingest; ``rebuild_bm25=False`` leaves the BM25
    index stale instead, like an ingest that died before rebuilding it.
    """
    from ingest.chunker import Chunker
    from ingest.loaders import load_document
    from rag.embed import get_embedder
    from rag.bm25 import rebuild_bm25_index
    from rag.store import ChunkStore, bump_generation

    folder = folder or settings.docs_dir
    chunker = Chunker.from_settings(settings)
    embedder = get_embedder(settings)
    store = ChunkStore(settings)
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        source = path.relative_to(folder).as_posix()
        chunks = chunker.run(load_document(source, data), hashlib.sha256(data).hexdigest())
        if chunks:
            store.add(chunks, embedder.embed([c.text for c in chunks]))
            total += len(chunks)
    bump_generation(settings)
    if rebuild_bm25:
        rebuild_bm25_index(settings, store)
    return total


SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "docs"
QA_DIR = Path(__file__).resolve().parent / "qa"
