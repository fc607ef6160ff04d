"""`python -m rag.eval`: recall@k and MRR, checked by hand on a tiny store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import rag.eval
from rag.errors import RagError
from rag.eval import QA, load_qa
from rag.bm25 import rebuild_bm25_index
from rag.retrieve import Hit
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation
from tests.corpus import QA_DIR
from tests.support import MODELS_DIR, run_module

FRUIT = [
    Chunk(id="a.md#0", source="a.md", index=0, text="apples apples apples"),
    Chunk(id="b.md#0", source="b.md", index=0, text="bananas"),
    Chunk(id="c.pdf#0", source="c.pdf", index=0, text="cherries apples", page=2),
]
# With --mode bm25 the ranks are plain to see:
#   bananas -> b.md first                       rank 1, RR 1
#   cherries (c.pdf, page 2) -> c.pdf p.2 first  rank 1, RR 1
#   apples (c.pdf) -> a.md, then c.pdf           rank 2, RR 1/2
#   durian (a.md) -> no hits at all              miss,   RR 0
#   cherries (c.pdf, page 3) -> only page 2      miss,   RR 0
# recall@5 = 3/5 = 0.6, MRR = (1 + 1 + 0.5) / 5 = 0.5;
# recall@1 = 2/5 = 0.4, MRR@1 = (1 + 1) / 5 = 0.4.
FRUIT_QA = [
    {"q": "bananas", "sources": ["b.md"]},
    {"q": "cherries", "sources": ["c.pdf"], "pages": [2]},
    {"q": "apples", "sources": ["c.pdf"]},
    {"q": "durian", "sources": ["a.md"]},
    {"q": "cherries", "sources": ["c.pdf"], "pages": [3]},
]


@pytest.fixture
def fruit(settings: Settings, tmp_path: Path) -> tuple[Settings, Path]:
    vectors = np.eye(len(FRUIT), 384, dtype=np.float32)
    store = ChunkStore(settings)
    store.add(FRUIT, vectors)
    bump_generation(settings)
    rebuild_bm25_index(settings, store)
    qa = tmp_path / "fruit.jsonl"
    qa.write_text("".join(json.dumps(item) + "\n" for item in FRUIT_QA))
    return settings, qa


@pytest.fixture
def eval_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., dict[str, object]]:
    """Run ``rag.eval.main`` in this process (a subprocess per call is slow on 2 cores)."""
    # The CLI starts from the process settings; make them independent of any .env here.
    monkeypatch.setattr(
        rag.eval, "get_settings", lambda: Settings(_env_file=None, models_dir_override=MODELS_DIR)
    )

    def run(settings: Settings, qa: Path, *args: str) -> dict[str, object]:
        status = rag.eval.main([str(qa), "--json", "--data-dir", str(settings.data_dir), *args])
        out = capsys.readouterr()
        assert status == 0, out.err
        return json.loads(out.out.strip().splitlines()[-1])

    return run


def test_recall_and_mrr_match_hand_computed_values(
    fruit: tuple[Settings, Path], eval_json: Callable[..., dict[str, object]]
) -> None:
    result = eval_json(*fruit, "--mode", "bm25")
    assert result["questions"] == 5
    assert result["recall"] == pytest.approx(0.6)
    assert result["mrr"] == pytest.approx(0.5)
    assert result["misses"] == ["durian", "cherries"]


def test_k_cuts_off_later_ranks(
    fruit: tuple[Settings, Path], eval_json: Callable[..., dict[str, object]]
) -> None:
    result = eval_json(*fruit, "--mode", "bm25", "--k", "1")
    assert result["recall"] == pytest.approx(0.4)
    assert result["mrr"] == pytest.approx(0.4)


def test_human_report_names_numbers_and_misses(fruit: tuple[Settings, Path]) -> None:
    settings, qa = fruit
    out = run_module(
        "rag.eval", str(qa), "--mode", "bm25", "--data-dir", str(settings.data_dir), cwd=qa.parent
    )
    assert out.returncode == 0, out.stderr
    assert "5 questions, mode bm25: recall@5 0.600, MRR 0.500" in out.stdout
    assert "missed: durian" in out.stdout


def test_shipped_qa_sets_hold_at_least_30_questions_in_total() -> None:
    total = sum(len(load_qa(QA_DIR / name)) for name in ("sample_docs.jsonl", "corpus.jsonl"))
    assert total >= 30


def test_pages_restrict_relevance_only_when_given() -> None:
    hit = Hit("c.pdf#0", "c.pdf", 2, None, "text", 1.0)
    assert QA("q", ("c.pdf",)).is_relevant(hit)
    assert QA("q", ("c.pdf",), (2, 3)).is_relevant(hit)
    assert not QA("q", ("c.pdf",), (4,)).is_relevant(hit)
    assert not QA("q", ("other.pdf",)).is_relevant(hit)


def test_malformed_qa_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    qa = tmp_path / "bad.jsonl"
    qa.write_text('{"q": "fine", "sources": ["a.md"]}\n{"question": "wrong key"}\n')
    with pytest.raises(RagError, match="line 2"):
        load_qa(qa)


def test_missing_qa_file_exits_1_with_a_sentence(
    fruit: tuple[Settings, Path],
    eval_json: Callable[..., dict[str, object]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, qa = fruit
    status = rag.eval.main([str(qa.parent / "nope.jsonl"), "--data-dir", str(settings.data_dir)])
    err = capsys.readouterr().err
    assert status == 1
    assert "Cannot read the QA file" in err and "nope.jsonl" in err
