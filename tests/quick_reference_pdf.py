"""Builds docs/quick-reference.pdf, the sample PDF shipped in docs/.

One topic per page, so the sample-docs QA set can check page numbers. The PDF
is committed; run this only after editing the text below:

    .venv/bin/python -m tests.quick_reference_pdf
"""

from __future__ import annotations

import sys
from pathlib import Path

from fpdf import FPDF

OUT = Path(__file__).resolve().parents[1] / "docs" / "quick-reference.pdf"

# (page title, paragraphs); each entry becomes exactly one page.
PAGES: list[tuple[str, list[str]]] = [
    (
        "Commands at a glance",
        [
            "make chat - install everything into .venv, prepare the models, ingest docs/ and "
            "start the chat at http://127.0.0.1:8000.",
            "make test - run the whole test suite.",
            "python -m ingest [DOCS_DIR] [--data-dir DIR] [--json] [--rebuild] - index new and "
            "changed files, drop deleted ones. Exit status 0: all files ingested; 2: some files "
            "failed and were skipped; 1: nothing could be done.",
            "python -m rag.search QUESTION [--k 5] [--json] - print the best passages with "
            "file, page and score.",
            "python -m rag.eval QA.jsonl [--k 5] [--mode hybrid|dense|bm25] - measure recall@k "
            "and MRR of the search on questions with known sources.",
            "python -m rag.compare QUESTION --models A B [--json] - ask two models the same "
            "question with the same passages and compare speed and answers.",
            "python -m rag.embedded_llm serve [--port N] - run the built-in offline model as an "
            "OpenAI-compatible server on 127.0.0.1.",
        ],
    ),
    (
        "Model servers",
        [
            "Foundry Local: foundry model run phi-4-mini. The port is dynamic and discovered "
            "automatically through foundry service status; leave LLM_BASE_URL unset.",
            "Ollama: ollama serve, then LLM_BASE_URL=http://127.0.0.1:11434/v1 and "
            "LLM_MODEL=phi4-mini.",
            "llama.cpp: llama-server -m model.gguf --port 8080, then "
            "LLM_BASE_URL=http://127.0.0.1:8080/v1.",
            "vLLM: vllm serve MODEL --port 8001, then LLM_BASE_URL=http://127.0.0.1:8001/v1.",
            "Offline: with no server running the app uses SmolLM2-135M on ONNX Runtime GenAI. "
            "It needs no network but is a very small model.",
            "Cloud fallback: LLM_FALLBACK_BASE_URL, LLM_FALLBACK_API_KEY, LLM_FALLBACK_MODEL. "
            "RAG_ROUTING=local-first (default), cloud-first or local-only.",
        ],
    ),
    (
        "In the chat window",
        [
            "Upload: drag a .md, .txt, .html, .pdf or .docx file into the chat. It is saved to "
            "docs/ and ingested; ask about it when the app says it is ready. Limit: "
            "RAG_UPLOAD_MAX_MB (20 MB).",
            "Switch model: open the settings (gear icon) and pick another model. The next "
            "message uses it and the conversation is kept.",
            "Sources: every answer lists its sources as file name and page. Open one to read "
            "the passage the model was given.",
            "Retrieval step: expand it to see every passage the search found, with its score.",
            "Follow-up questions: the last RAG_HISTORY_TURNS turns (6) are sent with each "
            "question, oldest dropped first when the context window is full.",
        ],
    ),
    (
        "Quick fixes",
        [
            "No model server answered: start Foundry Local or Ollama, or set LLM_BASE_URL.",
            "No documents ingested yet: put files into docs/ and run python -m ingest.",
            "Another ingest is running: wait for it, or set RAG_LOCK_TIMEOUT to wait longer.",
            "Encrypted PDF: save an unprotected copy and ingest again.",
            "File too large: raise RAG_MAX_FILE_MB (default 50) or split the file.",
            "Wrong or invented answers: check the search with python -m rag.search, and use a "
            "larger model than the offline one.",
        ],
    ),
]


def build(out: Path = OUT) -> Path:
    """Write the quick-reference PDF to ``out`` and return the path."""
    pdf = FPDF(format=(148, 210))  # A5 in mm
    pdf.set_title("Local RAG Chat quick reference")
    pdf.set_author("Local RAG Chat")
    # A fixed creation date keeps the committed file byte-identical between builds.
    from datetime import datetime, timezone

    pdf.set_creation_date(datetime(2026, 1, 1, tzinfo=timezone.utc))
    pdf.set_auto_page_break(auto=False)
    for title, paragraphs in PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 8, f"Local RAG Chat quick reference: {title}")
        pdf.ln(2)
        pdf.set_font("Helvetica", size=9)
        for text in paragraphs:
            pdf.multi_cell(0, 4.6, text)
            pdf.ln(1.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(out))
    return out


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
