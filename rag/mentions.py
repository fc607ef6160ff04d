"""Files named in a question: ``@user-guide.md`` or ``@"file name.pdf"`` limit retrieval to them.

A mention is an ``@`` at the start of the question or after a space (so an e-mail
address is not one), followed by a quoted name or by a file's name. Unquoted
names may hold spaces and may be followed by punctuation (``@onboarding
checklist.docx?``): the longest ingested name the text continues with wins. A
name matches a source by its path (``policies/expenses.txt``), its file name
(``expenses.txt``) or its file name without the extension (``expenses``), case
aside; a file name shared by two folders selects both.

A name that matches nothing makes :attr:`Scope.unknown` non-empty when it looks like
a file's (quoted, with an extension, or close to an ingested name: "@john" is left as
text), and
:func:`unknown_sentence` says which names come close (difflib): the answer
pipeline then answers with that sentence and asks no model.

In a conversation the scope carries over (:func:`follow_up_scope`): "@handbook.md how
many holiday days?" then "and for part-timers?" still searches only handbook.md.
It changes when a later question mentions other files, and ``@all`` (:data:`EVERY_FILE`)
goes back to every file; ``@all.md`` still names a file called all.md.

Without ``@``, a question may still name a file exactly (``summarize
handbook.md``): :attr:`Scope.named` lists those, for whole-document tasks
(:mod:`rag.summarize`); they do not limit ordinary retrieval.

>>> scope = scope_of('What does @handbook say about @"onboarding checklist.docx"?',
...                  ["handbook.md", "onboarding checklist.docx", "policies/expenses.txt"])
>>> scope.question
'What does handbook say about onboarding checklist.docx?'
>>> scope.sources
('handbook.md', 'onboarding checklist.docx')
>>> scope_of("Costs in @expense.txt?", ["policies/expenses.txt"]).unknown
('expense.txt',)
>>> follow_up_scope("And for part-timers?", ["@handbook how many days?"], ["handbook.md"]).sources
('handbook.md',)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

# An "@" opening the text or after whitespace or an opening bracket: not an e-mail's.
_AT = re.compile(r"(?:(?<=^)|(?<=[\s(\[]))@")
_QUOTED = re.compile(r'"([^"\n]+)"')
_TOKEN = re.compile(r"[^\s\"]+")
# What may follow a name that ends it: the end, a space, or closing punctuation.
_ENDS_NAME = re.compile(r"(?:$|[\s,;:!?)\]]|\.(?:$|\s))")
_TRAILING = ".,;:!?)]}'"
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")
# Words that ask for a task over whole files rather than a fact inside them.
WHOLE_TASK = re.compile(
    r"\b(summar(?:y|ies|i[sz]e[sd]?|i[sz]ing)|tl;?dr|overview|outline|gist|"
    r"compare|comparison|contrast|differences?|key points|main points|takeaways)\b",
    re.IGNORECASE,
)
LIST_HINT = "Type `/files` to list the ingested files."
# "@all": the conversation searches every file again (its own word, not a file's stem).
EVERY_FILE = "all"
_SPACES = re.compile(r"[ \t]{2,}")
# Names offered for an unknown one: at most this many, at least this similar.
CLOSE_NAMES = 5
CLOSE_CUTOFF = 0.5


@dataclass(frozen=True)
class Mention:
    """One ``@name`` in a text: where it is (``start``..``end``) and the name as written."""

    start: int
    end: int
    name: str


@dataclass(frozen=True)
class Scope:
    """What a question asks about: its text, and the files it limits retrieval to."""

    question: str  # the question with each mention as its bare name
    sources: tuple[str, ...] = ()  # files mentioned with @ (empty: every file)
    unknown: tuple[str, ...] = ()  # mentioned names no ingested file has
    named: tuple[str, ...] = ()  # files named exactly without @ (whole-document tasks)
    carried: bool = False  # ``sources`` come from an earlier question of the conversation
    every_file: bool = False  # the question says ``@all``: back to every file


def mentions(text: str, sources: Sequence[str] = ()) -> list[Mention]:
    """The ``@`` mentions in ``text``, in order; unquoted ones take the longest name in
    ``sources`` the text continues with, else the word after the ``@`` minus trailing
    punctuation."""
    names = _names_by_key(sources)
    found: list[Mention] = []
    for at in _AT.finditer(text):
        start = at.end()
        if start < len(text) and text[start] == '"':
            quoted = _QUOTED.match(text, start)
            if quoted:
                found.append(Mention(at.start(), quoted.end(), quoted.group(1).strip()))
                continue
        longest = _longest_known(text, start, names)
        if longest:
            found.append(Mention(at.start(), start + longest, text[start : start + longest]))
            continue
        token = _TOKEN.match(text, start)
        if token and token.group().rstrip(_TRAILING):
            name = token.group().rstrip(_TRAILING)
            found.append(Mention(at.start(), start + len(name), name))
    return found


def mentions_removed(text: str, sources: Sequence[str] = ()) -> str:
    """``text`` with each mention as its bare name: ``@"a b.pdf"?`` becomes ``a b.pdf?``."""
    parts, last = [], 0
    for mention in mentions(text, sources):
        parts.append(text[last : mention.start] + mention.name)
        last = mention.end
    return "".join(parts) + text[last:]


def whole_document_files(scope: Scope) -> tuple[str, ...]:
    """The files a whole-document task reads (:mod:`rag.summarize`), when ``scope``'s question
    asks for one ("summarize", "compare", "key points") about files it names: mentioned with
    ``@``, else named exactly. Empty for any other question, and for a follow-up whose files
    were carried over: "and the difference for part-timers?" after "@handbook.md ..." is a
    question about the handbook, not a request to read all of it."""
    if scope.carried:
        return ()
    files = scope.sources or scope.named
    return files if files and WHOLE_TASK.search(scope.question) else ()


def matching(name: str, sources: Sequence[str]) -> tuple[str, ...]:
    """The sources ``name`` denotes: by path, file name or file name without extension."""
    key = name.strip().casefold()
    return tuple(s for s in sources if key in _keys(s))


def scope_of(question: str, sources: Sequence[str]) -> Scope:
    """The :class:`Scope` of ``question`` among the ingested ``sources`` (see the module)."""
    found: list[str] = []
    unknown: list[str] = []
    parts: list[str] = []
    every_file = False
    last = 0
    for mention in mentions(question, sources):
        matched = matching(mention.name, sources)
        if _says_every_file(mention, question):
            every_file, written = True, ""  # "@all" is an instruction, not part of the question
        elif matched:
            found.extend(matched)
            written = mention.name
        elif _meant_as_file(mention, question, sources):
            unknown.append(mention.name)
            written = mention.name
        else:
            continue  # not a file: the text stays as written
        parts.append(question[last : mention.start] + written)
        last = mention.end
    parts.append(question[last:])
    text = "".join(parts)
    if every_file:
        text = _SPACES.sub(" ", text).strip()
    return Scope(
        question=text,
        sources=tuple(dict.fromkeys(found)),
        unknown=tuple(dict.fromkeys(unknown)),
        named=() if found or unknown else named_files(text, sources),
        every_file=every_file and not found,
    )


def follow_up_scope(question: str, earlier: Sequence[str], sources: Sequence[str]) -> Scope:
    """The :class:`Scope` of ``question`` in a conversation whose earlier user questions are
    ``earlier`` (oldest first), among the ingested ``sources``.

    The question's own mentions decide when it has any (files, an unknown name, or
    ``@all``), and so do files it names exactly ("summarize faq.txt"). Otherwise it keeps
    the files of the latest earlier question that mentioned ingested ones
    (``carried=True``), unless ``@all`` came after them. Earlier questions whose names
    matched nothing change nothing: they were answered with the close names.
    """
    scope = scope_of(question, sources)
    if scope.sources or scope.unknown or scope.every_file or scope.named:
        return scope
    for text in reversed(earlier):
        if "@" not in text:
            continue
        before = scope_of(text, sources)
        if before.every_file:
            return scope
        if before.sources:
            return replace(scope, sources=before.sources, carried=True)
    return scope


def _says_every_file(mention: Mention, text: str) -> bool:
    """``@all`` unquoted (``@"all"`` and ``@all.md`` are file names)."""
    quoted = text[mention.start + 1 : mention.start + 2] == '"'
    return not quoted and mention.name.casefold() == EVERY_FILE


def _meant_as_file(mention: Mention, text: str, sources: Sequence[str]) -> bool:
    """Whether an unmatched mention names a file: quoted, with an extension, or close to an
    ingested name. "@john said ..." is a person, and the question is answered as written."""
    quoted = text[mention.start + 1 : mention.start + 2] == '"'
    return (
        quoted or bool(_EXTENSION.search(mention.name)) or bool(close_names(mention.name, sources))
    )


def named_files(text: str, sources: Sequence[str]) -> tuple[str, ...]:
    """The sources whose path or file name (with its extension) ``text`` contains as words."""
    folded = text.casefold()
    return tuple(
        source
        for source in sources
        if _contains(folded, source.casefold())
        or _contains(folded, PurePosixPath(source).name.casefold())
    )


def _contains(folded: str, name: str) -> bool:
    """True when ``name`` occurs in ``folded`` as a whole name, not inside a longer word."""
    at = folded.find(name)
    while at >= 0:
        before = folded[at - 1] if at else " "
        if not (before.isalnum() or before in "/_-.@") and _ENDS_NAME.match(folded, at + len(name)):
            return True
        at = folded.find(name, at + 1)
    return False


def close_names(name: str, sources: Sequence[str], n: int = CLOSE_NAMES) -> list[str]:
    """The sources whose names come closest to ``name`` (difflib), best first."""
    by_key: dict[str, str] = {}
    for source in sources:
        for key in _keys(source):
            by_key.setdefault(key, source)
    close = difflib.get_close_matches(name.casefold(), list(by_key), n=n * 3, cutoff=CLOSE_CUTOFF)
    # Also a name the mention is part of ("guide" in "user-guide.md"): difflib misses short ones.
    close += [k for k in by_key if len(name) >= 3 and name.casefold() in k]
    return list(dict.fromkeys(by_key[k] for k in close))[:n]


def unknown_sentence(
    unknown: Iterable[str],
    sources: Sequence[str],
    *,
    prefix: str = "@",
    listing: str = LIST_HINT,
) -> str:
    """What to say about names that match no ingested file: the close names, written as
    ``prefix`` + name (``@guide.md``), then ``listing`` (how to see them all)."""
    lines = []
    for name in unknown:
        close = close_names(name, sources)
        if close:
            offer = ", ".join(f"`{prefix}{_written(s)}`" for s in close)
            lines.append(f'No ingested file is called "{name}". Did you mean {offer}?')
        else:
            lines.append(f'No ingested file is called "{name}", and none has a similar name.')
    return " ".join([*lines, listing]).strip()


def _written(source: str) -> str:
    """How to mention ``source``: its file name, quoted when it holds a space."""
    name = PurePosixPath(source).name
    return f'"{name}"' if " " in name else name


def _keys(source: str) -> set[str]:
    path = PurePosixPath(source)
    return {source.casefold(), path.name.casefold(), path.stem.casefold()}


def _names_by_key(sources: Sequence[str]) -> list[str]:
    """Every way of naming the sources, longest first (the longest match wins)."""
    keys = {key for source in sources for key in _keys(source)}
    return sorted(keys, key=len, reverse=True)


def _longest_known(text: str, start: int, names: Sequence[str]) -> int:
    """The length of the longest name in ``names`` that ``text`` continues with at ``start``,
    ending at a word boundary; 0 when none does."""
    folded = text[start:].casefold()
    for name in names:  # longest first
        if folded.startswith(name) and _ENDS_NAME.match(folded, len(name)):
            return len(name)
    return 0
