"""The chunker: a :class:`~ingest.document.Document` to token-sized :class:`~rag.store.Chunk` s.

Chunks are measured in tokens of the embedding model's own tokenizer, because the
model sees at most ``max_tokens`` (256 for all-MiniLM-L6-v2, special tokens
included) and silently drops the rest; 200 words of technical text are already
about 330 tokens, so counting words would lose text.

Consecutive sections on the same page are chunked as one stream, so short
sections share a chunk instead of becoming tiny ones; a chunk never spans two
pages. Cuts prefer a section start past the first quarter of the token budget,
then, in its second half, paragraph breaks, sentence ends, line breaks and spaces
between words. The next chunk starts up to ``overlap`` tokens earlier, at a
sentence start when one is there, except after a cut at a section start, where it
starts with the new section.
Chunk text is cut out of the original text with the tokenizer's character
offsets, so it keeps its case, accents and spacing. A chunk also stays under
``budget * 8`` characters, and words WordPiece cannot split (base64, minified
code, long URLs: one ``[UNK]`` each) are cut into pieces that count as tokens.

>>> chunker = Chunker(tokenizer, chunk_tokens=220, overlap=40)   # doctest: +SKIP
>>> chunks = chunker.run(document, file_sha256="ab12...")         # doctest: +SKIP
>>> chunks[0].id, chunks[0].page, chunks[0].heading               # doctest: +SKIP
('guide.pdf#0', 1, None)
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest.document import Document, Section
from rag.store import Chunk, chunk_id

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from rag.settings import Settings

# Bumped whenever the same text would be cut differently: the ingest state records it,
# and a store chunked by another version is rebuilt.
CHUNKER_VERSION = 3

# Scores of a cut between two tokens: higher is a better place to end a chunk. A new
# section (a heading) is the best: a chunk that ends with the next section's first words
# is retrieved for the wrong heading and blurs both sections.
_WORD, _LINE, _SENTENCE, _PARAGRAPH, _SECTION = 1, 2, 3, 4, 5
_SENTENCE_END = re.compile(r"[.!?:;)\]\"'»”’]$")
# [CLS] and [SEP] take two of the model's positions.
_SPECIAL_TOKENS = 2
# WordPiece turns a word longer than this (base64, minified code, a long URL) into
# ONE [UNK] token whose offsets span the whole word: counted as one token, it would
# make a chunk of any length. Such words are cut into pieces of this many characters,
# tokenized piece by piece, so they cost tokens like the model's real sub-words.
_LONG_WORD_CHARS = 100
# A chunk also stays under budget * this many characters. Prose averages about 4
# characters per token, so this binds only on odd text (huge whitespace runs) and
# keeps a chunk within what a prompt can afford.
_MAX_CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class _Stream:
    """Sections of one page joined into one text, with where each heading starts."""

    text: str
    page: int | None
    heading_starts: list[int]
    headings: list[str | None]

    def heading_at(self, offset: int) -> str | None:
        i = bisect.bisect_right(self.heading_starts, offset) - 1
        return self.headings[max(i, 0)]


class Chunker:
    """Split documents into overlapping chunks of at most ``chunk_tokens`` model tokens.

    ``max_tokens`` is the model's limit including special tokens; the budget is
    clamped below it, and ``overlap`` is clamped to half the budget so every
    chunk moves forward.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        chunk_tokens: int = 220,
        overlap: int = 40,
        max_tokens: int = 256,
    ) -> None:
        if chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be at least 8, got {chunk_tokens}")
        if overlap < 0:
            raise ValueError(f"overlap must not be negative, got {overlap}")
        self.tokenizer = tokenizer
        self.budget = min(chunk_tokens, max_tokens - _SPECIAL_TOKENS)
        self.overlap = min(overlap, self.budget // 2)
        self.max_chars = max(self.budget * _MAX_CHARS_PER_TOKEN, _LONG_WORD_CHARS)

    @classmethod
    def from_settings(cls, settings: Settings) -> Chunker:
        """The chunker for the configured model (``RAG_CHUNK_TOKENS``, ``RAG_CHUNK_OVERLAP``)."""
        from rag.embed import load_tokenizer

        return cls(
            load_tokenizer(settings),
            chunk_tokens=settings.chunk_tokens,
            overlap=settings.chunk_overlap,
            max_tokens=settings.embed_max_tokens,
        )

    def run(self, document: Document, file_sha256: str = "") -> list[Chunk]:
        """The chunks of ``document``, numbered from 0 in reading order."""
        chunks: list[Chunk] = []
        for stream in _streams(document.sections):
            for start, end in self._spans(stream.text, stream.heading_starts):
                index = len(chunks)
                chunks.append(
                    Chunk(
                        id=chunk_id(document.source, index),
                        source=document.source,
                        index=index,
                        text=stream.text[start:end],
                        page=stream.page,
                        heading=stream.heading_at(start),
                        file_sha256=file_sha256,
                    )
                )
        return chunks

    def _spans(self, text: str, section_starts: Sequence[int] = ()) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the chunks of one text whose sections
        begin at the character offsets ``section_starts``."""
        offsets, split = self._offsets(text)
        n = len(offsets)
        if n == 0:
            return []
        ends = [end for _, end in offsets]
        scores = [0] + [_cut_score(text, offsets[i - 1][1], offsets[i][0]) for i in range(1, n)]
        token_starts = [start for start, _ in offsets]
        for offset in section_starts:
            i = bisect.bisect_left(token_starts, offset)
            if 0 < i < n:
                scores[i] = _SECTION
        spans: list[tuple[int, int]] = []
        start = 0
        while True:
            # The last token that keeps the chunk within max_chars (at least one token).
            fits = bisect.bisect_right(ends, offsets[start][0] + self.max_chars)
            if n - start <= self.budget and fits >= n:
                end = n
            else:
                end = self._best_cut(scores, start, max(min(start + self.budget, fits), start + 1))
            if split:
                end = self._fit(text, offsets, start, end)
            spans.append((offsets[start][0], offsets[end - 1][1]))
            if end >= n:
                return spans
            start = self._next_start(scores, start, end)

    def _offsets(self, text: str) -> tuple[list[tuple[int, int]], bool]:
        """Character offsets of the tokens of ``text``, and whether a long word was split.

        A word over ``_LONG_WORD_CHARS`` is tokenized in pieces, giving the real
        sub-words the model would see for a piece of it.
        """
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        if all(end - start <= _LONG_WORD_CHARS for start, end in offsets):
            return offsets, False
        split: list[tuple[int, int]] = []
        for start, end in offsets:
            if end - start <= _LONG_WORD_CHARS:
                split.append((start, end))
                continue
            for piece in range(start, end, _LONG_WORD_CHARS):
                stop = min(piece + _LONG_WORD_CHARS, end)
                sub = self.tokenizer.encode(text[piece:stop], add_special_tokens=False).offsets
                split.extend((piece + a, piece + b) for a, b in sub)
        return split, True

    def _fit(self, text: str, offsets: list[tuple[int, int]], start: int, end: int) -> int:
        """``end`` moved back until the chunk's text, tokenized whole, fits the budget.

        A fragment of a split word can tokenize into a few more tokens than its
        pieces did (the cut moves WordPiece's boundaries), so text with split
        words is counted again; other text never needs this.
        """
        while end > start + 1:
            chunk = text[offsets[start][0] : offsets[end - 1][1]]
            excess = len(self.tokenizer.encode(chunk, add_special_tokens=False).ids) - self.budget
            if excess <= 0:
                break
            end = max(end - excess, start + 1)
        return end

    def _best_cut(self, scores: list[int], start: int, hi: int) -> int:
        # The chunk is tokens [start, end) with end <= hi. A section start past the
        # first quarter of the budget wins (the latest one, so short sections still
        # share a chunk); otherwise the best-scored cut in the second half, the
        # latest one among equals.
        sections = [
            i for i in range(start + max(self.budget // 4, 1), hi + 1) if scores[i] == _SECTION
        ]
        if sections:
            return sections[-1]
        lo = start + max((hi - start) // 2, 1)
        best = max(range(lo, hi + 1), key=lambda i: (scores[i], i))
        return best if scores[best] > 0 else hi

    def _next_start(self, scores: list[int], start: int, end: int) -> int:
        if self.overlap == 0 or scores[end] == _SECTION:
            return end
        lo = max(end - self.overlap, start + 1)
        for wanted in (_SENTENCE, _WORD):
            for i in range(lo, end):
                if scores[i] >= wanted:
                    return i
        return lo


def _cut_score(text: str, prev_end: int, next_start: int) -> int:
    """How good a chunk boundary the gap ``text[prev_end:next_start]`` is."""
    gap = text[prev_end:next_start]
    if not gap:
        return 0  # inside a word ("embed" | "##ding") or punctuation glued to it
    if "\n\n" in gap or "\f" in gap:
        return _PARAGRAPH
    if _SENTENCE_END.search(text, max(prev_end - 1, 0), prev_end):
        return _SENTENCE
    if "\n" in gap:
        return _LINE
    return _WORD


def _streams(sections: tuple[Section, ...]) -> list[_Stream]:
    """Join consecutive sections that share a page; remember each heading's offset."""
    streams: list[_Stream] = []
    group: list[Section] = []
    for section in sections:
        if group and section.page != group[0].page:
            streams.append(_join(group))
            group = []
        if section.text.strip():
            group.append(section)
    if group:
        streams.append(_join(group))
    return streams


def _join(group: list[Section]) -> _Stream:
    parts: list[str] = []
    starts: list[int] = []
    headings: list[str | None] = []
    offset = 0
    for section in group:
        text = section.text.strip()
        starts.append(offset)
        headings.append(section.heading)
        parts.append(text)
        offset += len(text) + 2  # the "\n\n" joining sections
    return _Stream("\n\n".join(parts), group[0].page, starts, headings)
