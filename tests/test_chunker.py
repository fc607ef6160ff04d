"""The chunker cuts documents by the embedding model's tokens, at natural boundaries."""

from __future__ import annotations

import base64
import itertools
import random
from collections.abc import Iterator

import pytest

import ingest.chunker
from ingest.chunker import Chunker
from ingest.document import Document, Section
from rag.embed import load_tokenizer
from rag.settings import Settings
from tests.documents import TOPICS, prose
from tests.support import make_settings

pytestmark = pytest.mark.embedder
# all-MiniLM-L6-v2 sees at most this many tokens, [CLS] and [SEP] included.
MODEL_TOKENS = 256


@pytest.fixture
def tokenizer(settings: Settings):  # type: ignore[no-untyped-def]
    return load_tokenizer(settings)


@pytest.fixture
def default_chunker(settings: Settings) -> Chunker:
    return Chunker.from_settings(settings)


def _chunker(  # type: ignore[no-untyped-def]
    tokenizer, chunk_tokens: int, overlap: int, max_tokens: int = MODEL_TOKENS
) -> Chunker:
    return Chunker(tokenizer, chunk_tokens=chunk_tokens, overlap=overlap, max_tokens=max_tokens)


def _tokens(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    return len(tokenizer.encode(text).ids)  # with [CLS]/[SEP], as the model sees it


def _long_doc(paragraphs: int = 12) -> Document:
    text = "\n\n".join(prose(t, paragraphs // len(TOPICS) + 1) for t in TOPICS)
    return Document("long.txt", (Section(text),))


def test_chunks_never_exceed_the_models_token_limit(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunks = _chunker(tokenizer, 220, 40).run(_long_doc())
    assert len(chunks) > 3
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 256
    # And they are not needlessly small: all but the last fill most of the budget.
    assert min(_tokens(tokenizer, c.text) for c in chunks[:-1]) >= 110


def test_chunk_size_is_clamped_to_the_model_limit(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = _chunker(tokenizer, 256, 40, max_tokens=128)
    chunks = chunker.run(_long_doc())
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 128


def test_chunk_text_is_cut_from_the_original_text(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = Document("a.txt", (Section("Ünïcödé Café — MixedCase TEXT.  " * 60),))
    for chunk in _chunker(tokenizer, 64, 8).run(doc):
        assert chunk.text in doc.sections[0].text  # case, accents and spacing kept


def test_consecutive_chunks_overlap(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunks = _chunker(tokenizer, 120, 40).run(_long_doc())
    for before, after in zip(chunks, chunks[1:], strict=False):
        head = after.text[:30]
        assert head in before.text, "the next chunk starts inside the previous one"


def test_chunks_end_at_sentence_or_paragraph_boundaries(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunks = _chunker(tokenizer, 100, 20).run(_long_doc())
    for chunk in chunks:
        assert chunk.text.rstrip()[-1] in ".!?)", chunk.text[-40:]


def test_chunk_keeps_page_and_nearest_heading(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = Document(
        "g.pdf",
        (
            Section(prose("tides", 4), page=1, heading="Tides"),
            Section("Short note.", page=2, heading="Tides"),
            Section(prose("bees", 4), page=2, heading="Bees"),
        ),
    )
    chunks = _chunker(tokenizer, 100, 20).run(doc)
    assert {c.page for c in chunks} == {1, 2}
    assert all(c.heading == "Tides" for c in chunks if c.page == 1)
    # Chunks that start inside the bees section (no text of the sections before it).
    bees = [c for c in chunks if c.page == 2 and "Short note" not in c.text]
    assert bees and all(c.heading == "Bees" for c in bees)
    assert [c.heading for c in chunks if "Short note" in c.text][0] == "Tides"


def test_chunk_never_spans_two_pages(default_chunker: Chunker) -> None:
    doc = Document("g.pdf", (Section("Alpha page one.", page=1), Section("Beta page two.", page=2)))
    chunks = default_chunker.run(doc)
    assert [(c.page, c.text) for c in chunks] == [(1, "Alpha page one."), (2, "Beta page two.")]


def test_short_sections_on_one_page_share_a_chunk(default_chunker: Chunker) -> None:
    doc = Document("a.md", (Section("A\n\none.", heading="A"), Section("B\n\ntwo.", heading="B")))
    chunks = default_chunker.run(doc)
    assert len(chunks) == 1 and chunks[0].text == "A\n\none.\n\nB\n\ntwo."
    assert chunks[0].heading == "A"


def test_chunk_ids_are_stable_source_and_index(tokenizer) -> None:  # type: ignore[no-untyped-def]
    chunker = _chunker(tokenizer, 100, 20)
    first = chunker.run(_long_doc(), file_sha256="abc")
    again = chunker.run(_long_doc(), file_sha256="abc")
    assert [c.id for c in first] == [f"long.txt#{i}" for i in range(len(first))]
    assert first == again
    assert all(c.file_sha256 == "abc" and c.source == "long.txt" for c in first)


def test_chunker_from_settings_uses_the_configured_sizes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    chunker = Chunker.from_settings(make_settings(tmp_path, chunk_tokens=64, chunk_overlap=10))
    assert (chunker.budget, chunker.overlap) == (64, 10)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 5000,  # one word: WordPiece makes it a single [UNK] spanning 5000 characters
        base64.b64encode(random.Random(0).randbytes(20000)).decode(),  # an inlined image
        "var a=" + "".join(f"f{i}(b{i})+" for i in range(2000)) + "0;",  # minified code
        "See https://example.com/download?token=" + "a1B2c3D4" * 600 + " for details.",
    ],
    ids=["one-long-word", "base64", "minified-js", "long-url"],
)
def test_unbroken_text_is_cut_within_the_token_and_character_bounds(tokenizer, text) -> None:  # type: ignore[no-untyped-def]
    chunker = _chunker(tokenizer, 100, 10)
    chunks = chunker.run(Document("a.txt", (Section(text),)))
    assert len(chunks) > 1
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 100 + 2  # budget + [CLS]/[SEP]
    assert max(len(c.text) for c in chunks) <= chunker.max_chars == 800
    assert all(c.text in text for c in chunks)
    assert text.startswith(chunks[0].text) and text.endswith(chunks[-1].text)


def test_a_new_section_starts_a_new_chunk_even_early_in_the_budget(
    tokenizer,  # type: ignore[no-untyped-def]
) -> None:
    # The second chunk of "Intro" starts late in that section (overlap); the "Setup"
    # heading then falls in the first half of its budget, where plain cuts are not
    # allowed. The section start still ends the chunk, so no chunk mixes sections.
    intro = Section("Intro\n\n" + prose("tides", 3), heading="Intro")
    setup = Section("Setup\n\n" + prose("bread", 2), heading="Setup")
    doc = Document("guide.md", (intro, setup))

    chunks = _chunker(tokenizer, 120, 40).run(doc)

    setup_chunks = [c for c in chunks if c.heading == "Setup"]
    assert setup_chunks and setup_chunks[0].text.startswith("Setup\n\n")
    for chunk in chunks:
        assert ("Setup" in chunk.text) == (chunk.heading == "Setup"), chunk.text[:80]


# --- streaming: windows of text, sections pulled as needed ------------------------------


def _mixed_sections() -> list[Section]:
    rng = random.Random(7)
    words = ["alpha", "beta.", "gamma,", "kayak", "embedding", "\n\nPara", "x" * 130, "東京"]
    sections = []
    for i in range(30):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 1500)))
        sections.append(Section(f"H{i}\n\n{body}", page=i // 10 or None, heading=f"H{i}"))
    sections.append(Section(base64.b64encode(rng.randbytes(30_000)).decode(), page=3))
    return sections


@pytest.mark.parametrize("sizes", [(220, 40), (64, 10), (100, 0)], ids=str)
def test_text_tokenized_in_windows_is_cut_exactly_as_when_tokenized_whole(  # type: ignore[no-untyped-def]
    tokenizer, sizes: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = Document("mixed.md", tuple(_mixed_sections()))
    chunker = _chunker(tokenizer, *sizes)
    monkeypatch.setattr(ingest.chunker, "_WINDOW_CHARS", 10**9)  # the whole page at once
    monkeypatch.setattr(ingest.chunker, "_DROP_TOKENS", 10**9)
    whole = chunker.run(doc)
    monkeypatch.setattr(ingest.chunker, "_WINDOW_CHARS", 3000)  # many windows per page
    monkeypatch.setattr(ingest.chunker, "_DROP_TOKENS", 50)
    windowed = chunker.run(doc)
    assert len(whole) > 100 and windowed == whole


def test_sections_are_pulled_only_as_far_as_the_chunks_taken(default_chunker: Chunker) -> None:
    pulled: list[int] = []

    def endless() -> Iterator[Section]:
        for i in itertools.count():
            pulled.append(i)
            topic = sorted(TOPICS)[i % len(TOPICS)]
            yield Section(f"Part {i}\n\n{prose(topic, 2)}", heading=f"Part {i}")

    first = list(itertools.islice(default_chunker.iter_chunks("endless.md", endless()), 5))
    assert [c.index for c in first] == [0, 1, 2, 3, 4]
    assert len(pulled) < 200, "a window of text, not the whole (endless) document"
