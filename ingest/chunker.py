"""The chunker: sections of a document to token-sized :class:`~rag.store.Chunk` s.

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

The work streams: sections are pulled as the chunker needs them, the text is
tokenized in windows of about 64K characters cut at whitespace (where no token
can straddle the cut), and text and tokens already chunked are dropped. Memory
holds a window, however long the document; chunks come out one at a time.

>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> vocab = {"[UNK]": 0, **{w: i for i, w in enumerate("one two three four .".split(), 1)}}
>>> tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
>>> tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
>>> chunker = Chunker(tokenizer, chunk_tokens=8, overlap=0, max_tokens=16)
>>> text = "one two three four. four three two one. one two."
>>> chunks = chunker.run(Document("notes.txt", (Section(text, heading="Counting"),)))
>>> for chunk in chunks:
...     print(chunk.id, repr(chunk.text), chunk.heading)
notes.txt#0 'one two three four.' Counting
notes.txt#1 'four three two one. one two.' Counting
"""

from __future__ import annotations

import bisect
import itertools
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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
# Text is tokenized this many characters at a time (about 16K tokens of prose).
_WINDOW_CHARS = 1 << 16
# Chunked tokens (and their text) are dropped once this many have piled up.
_DROP_TOKENS = 4096


class Chunker:
    """Split documents into overlapping chunks of at most ``chunk_tokens`` model tokens.

    ``max_tokens`` is the model's limit including special tokens; the budget is
    clamped below it, and ``overlap`` is clamped to half the budget so every
    chunk moves forward. :meth:`from_settings` takes all three from the settings.
    """

    def __init__(
        self, tokenizer: Tokenizer, *, chunk_tokens: int, overlap: int, max_tokens: int
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
        return list(self.iter_chunks(document.source, document.sections, file_sha256))

    def iter_chunks(
        self, source: str, sections: Iterable[Section], file_sha256: str = ""
    ) -> Iterator[Chunk]:
        """The chunks of ``source`` 's ``sections``, one at a time, pulling sections as needed."""
        index = 0
        # A page is either read from its text layer or by OCR, never both.
        for (page, ocr), group in itertools.groupby(sections, key=lambda s: (s.page, s.ocr)):
            stream = _PageText(s for s in group if s.text.strip())
            for start, end in self._spans(stream):
                yield Chunk(
                    id=chunk_id(source, index),
                    source=source,
                    index=index,
                    text=stream.slice(start, end),
                    page=page,
                    heading=stream.heading_at(start),
                    file_sha256=file_sha256,
                    ocr=ocr,
                )
                index += 1

    def _spans(self, stream: _PageText) -> Iterator[tuple[int, int]]:
        """Character spans ``(start, end)`` of the chunks of one page's text, in order.

        Tokens come in windows; a chunk is cut only once the tokens after it are
        known as far as its cut can look (the budget, ``max_chars``), so the cuts
        are those of the whole text tokenized at once.
        """
        tokens = _Tokens()
        start = 0
        while True:
            while not tokens.complete and not self._decidable(tokens, start):
                self._tokenize_more(tokens, stream)
            n = len(tokens.starts)
            if n == 0:
                return
            end = self._cut(tokens, stream, start, n)
            yield tokens.starts[start], tokens.ends[end - 1]
            if end >= n:
                return
            start = self._next_start(tokens.scores, start, end)
            if start > _DROP_TOKENS:
                tokens.drop(start)
                stream.forget_before(tokens.starts[0])
                start = 0

    def _decidable(self, tokens: _Tokens, start: int) -> bool:
        """Whether the chunk starting at token ``start`` can be cut with the tokens known."""
        known = len(tokens.starts) > start + self.budget + 1
        return known and tokens.ends[-1] > tokens.starts[start] + self.max_chars

    def _cut(self, tokens: _Tokens, stream: _PageText, start: int, n: int) -> int:
        """The end (exclusive token index) of the chunk that starts at token ``start``."""
        # The last token that keeps the chunk within max_chars (at least one token).
        fits = bisect.bisect_right(tokens.ends, tokens.starts[start] + self.max_chars)
        if n - start <= self.budget and fits >= n:
            end = n
        else:
            hi = max(min(start + self.budget, fits), start + 1)
            end = self._best_cut(tokens.scores, start, hi)
        if tokens.split_words:
            end = self._fit(tokens, stream, start, end)
        return end

    def _tokenize_more(self, tokens: _Tokens, stream: _PageText) -> None:
        """Tokenize the next window of the page's text and append its tokens and cut scores."""
        upto = tokens.upto
        while stream.length - upto < _WINDOW_CHARS and stream.grow():
            pass
        stop = stream.length
        if stop - upto > _WINDOW_CHARS:
            stop = upto + _window_cut(stream.slice(upto, upto + _WINDOW_CHARS))
        offsets, split = self._offsets(stream.slice(upto, stop))
        tokens.split_words = tokens.split_words or split
        context_start = max(tokens.ends[-1] - 1, 0) if tokens.ends else upto
        context = stream.slice(context_start, stop)
        for a, b in offsets:
            start, end = upto + a, upto + b
            if tokens.ends:
                prev = tokens.ends[-1] - context_start
                tokens.scores.append(_cut_score(context, prev, start - context_start))
            else:
                tokens.scores.append(0)
            tokens.starts.append(start)
            tokens.ends.append(end)
        tokens.upto = stop
        tokens.complete = stream.exhausted and stop == stream.length
        self._mark_sections(tokens, stream)

    def _mark_sections(self, tokens: _Tokens, stream: _PageText) -> None:
        """Give the first token of each section start tokenized so far the section score."""
        while tokens.next_section < len(stream.heading_starts):
            offset = stream.heading_starts[tokens.next_section]
            waiting = not tokens.starts or tokens.starts[-1] < offset
            if offset > 0 and waiting and not tokens.complete:
                return  # its first token is not tokenized yet
            i = bisect.bisect_left(tokens.starts, offset)
            if offset > 0 and i < len(tokens.starts):
                tokens.scores[i] = _SECTION
            tokens.next_section += 1

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

    def _fit(self, tokens: _Tokens, stream: _PageText, start: int, end: int) -> int:
        """``end`` moved back until the chunk's text, tokenized whole, fits the budget.

        A fragment of a split word can tokenize into a few more tokens than its
        pieces did (the cut moves WordPiece's boundaries), so once a page's text
        showed split words, its chunks are counted again; other text never needs this.
        """
        while end > start + 1:
            chunk = stream.slice(tokens.starts[start], tokens.ends[end - 1])
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


def _window_cut(window: str) -> int:
    """Where to end a window of text so that no token straddles the cut.

    WordPiece splits words at whitespace and makes every ASCII punctuation mark a
    token of its own, so the last whitespace, else the last punctuation mark,
    is such a place; text with neither (one endless word) is cut at the end.
    """
    for marks in (" \n\t\f\r", string.punctuation):
        cut = max(window.rfind(mark) for mark in marks)
        if cut > 0:
            return cut
    return len(window)


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


@dataclass
class _Tokens:
    """The tokens of one page's text known so far: global character offsets and cut scores.

    ``scores[i]`` rates the cut before token ``i``; ``split_words`` once a long word
    was cut into pieces. ``upto`` is where tokenizing stopped; ``complete`` when that
    is the end.
    """

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    scores: list[int] = field(default_factory=list)
    split_words: bool = False
    upto: int = 0
    complete: bool = False
    next_section: int = 0  # the first section start not yet marked in scores

    def drop(self, count: int) -> None:
        """Forget the first ``count`` tokens: nothing before the current chunk is read again."""
        for values in (self.starts, self.ends, self.scores):
            del values[:count]


class _PageText:
    """The sections of one page as one text: ``"\\n\\n"`` between them, heading offsets kept.

    Sections are appended as the chunker asks for more (:meth:`grow`), and text
    before the chunk being cut is dropped (:meth:`forget_before`); offsets stay
    those of the whole page's text.
    """

    def __init__(self, sections: Iterator[Section]) -> None:
        self._sections = sections
        self._text = ""
        self._base = 0  # the global offset of self._text[0]
        self.length = 0  # the global end of the text appended so far
        self.exhausted = False
        self.heading_starts: list[int] = []
        self.headings: list[str | None] = []

    def grow(self) -> bool:
        """Append the next section; False when the page has no more."""
        section = next(self._sections, None)
        if section is None:
            self.exhausted = True
            return False
        text = section.text.strip()
        if self.length:
            self._text += "\n\n"
            self.length += 2
        self.heading_starts.append(self.length)
        self.headings.append(section.heading)
        self._text += text
        self.length += len(text)
        return True

    def slice(self, start: int, end: int) -> str:
        """The page's text from global offset ``start`` to ``end``."""
        return self._text[start - self._base : end - self._base]

    def forget_before(self, offset: int) -> None:
        """Drop the text before global ``offset``: it is chunked already."""
        # Only when it is most of the text: copying a long rest on every drop would be quadratic.
        if offset - self._base > max(_WINDOW_CHARS, len(self._text) // 2):
            self._text = self._text[offset - self._base :]
            self._base = offset

    def heading_at(self, offset: int) -> str | None:
        i = bisect.bisect_right(self.heading_starts, offset) - 1
        return self.headings[max(i, 0)]
