"""`python -m ingest` as a user runs it: real processes, exit codes, JSON, the writer lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.documents import certificate_encrypted_pdf_bytes, write_corpus
from tests.support import REPO, cli_env, run_module

HOLD_LOCK = """
import sys, time
from ingest.lock import writer_lock
from rag.settings import Settings
with writer_lock(Settings(_env_file=None, data_dir=sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def run_ingest(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_module("ingest", *args, cwd=cwd, env=env)


def _hold_lock(data: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data), str(seconds)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.embedder
def test_cli_prints_json_as_the_last_line_and_exits_0_then_2_on_failures(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    write_corpus(docs)
    first = run_ingest(docs, "--data-dir", data, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["added"] == 5 and result["failed"] == [] and result["chunks"] >= 5
    assert set(result) == {"added", "updated", "removed", "unchanged", "failed", "chunks"}

    (docs / "sub dir").mkdir()
    (docs / "sub dir" / "junk.txt").write_bytes(b"\x00\x01\x02" * 100)
    (docs / "volcanoes.md").unlink()
    second = run_ingest(docs, "--data-dir", data, "--json", cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    after = json.loads(second.stdout.strip().splitlines()[-1])
    assert 0 < after.pop("chunks") < result["chunks"]
    assert after == {
        "added": 0,
        "updated": 0,
        "removed": 1,
        "unchanged": 4,
        "failed": [
            {"path": "sub dir/junk.txt", "error": "binary file, not text: it contains NUL bytes"}
        ],
    }
    assert "Traceback" not in second.stderr


@pytest.mark.embedder
def test_cli_exits_2_when_one_pdf_has_an_unsupported_encryption(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    write_corpus(docs)
    (docs / "sealed.pdf").write_bytes(certificate_encrypted_pdf_bytes())
    done = run_ingest(docs, "--data-dir", data, "--json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["added"] == 5 and result["failed"] == [
        {
            "path": "sealed.pdf",
            "error": "encrypted PDF: its encryption method is not supported "
            "(only Standard PDF encryption handler is available)",
        }
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.embedder
def test_cli_with_another_data_dir_uses_the_default_models_of_the_repo(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_corpus(docs)
    env = cli_env()
    del env["RAG_MODELS_DIR"]  # the default: the project's own .data/models
    done = run_ingest(docs, "--data-dir", tmp_path / "elsewhere", "--json", cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["chunks"] > 0
    assert not (tmp_path / "elsewhere" / "models").exists()


def test_unexpected_error_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    done = run_ingest(docs, "--data-dir", not_a_folder, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("ingest: unexpected error (")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.embedder
def test_cli_prints_a_one_line_summary_and_each_failure(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha")
    (docs / "empty.txt").write_bytes(b"")
    done = run_ingest(docs, "--data-dir", data, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "Ingested 2 files: 1 added, 0 updated, 0 removed, 0 unchanged, 1 failed; 1 chunk in store.",
        "  failed: empty.txt: empty file: nothing to index",
    ]
    assert "\r" not in done.stderr, "no progress bar when stderr is not a terminal"


@pytest.mark.embedder
def test_cli_reads_docs_and_data_dirs_from_the_environment(tmp_path: Path) -> None:
    docs, data = tmp_path / "d", tmp_path / "store"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    env = cli_env() | {"RAG_DOCS_DIR": str(docs), "RAG_DATA_DIR": str(data)}
    done = run_ingest("--json", cwd=tmp_path, env=env)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["added"] == 1
    assert (data / "chroma").is_dir()


def test_missing_docs_folder_exits_1_with_a_sentence_and_no_traceback(tmp_path: Path) -> None:
    done = run_ingest(tmp_path / "nope", "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("ingest: The docs folder ") and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_embedding_model_exits_1_with_how_to_fix(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    env = cli_env() | {"RAG_MODELS_DIR": str(tmp_path / "no-models")}
    done = run_ingest(docs, "--data-dir", tmp_path / "data", cwd=tmp_path, env=env)
    assert done.returncode == 1 and "make models" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.embedder
def test_second_ingest_exits_with_a_clear_message_while_another_holds_the_lock(
    tmp_path: Path,
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    holder = _hold_lock(data, 60)
    try:
        done = run_ingest(docs, "--data-dir", data, "--json", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"ingest: Another ingest is writing {data} (lock file {data / 'ingest.lock'}): wait for it "
        "to finish and run again, or set RAG_LOCK_TIMEOUT=SECONDS to wait longer."
    )
    assert not (data / "chroma").exists(), "the locked-out process must not touch the store"
    # The holder died (as by SIGKILL): its lock died with it.
    assert run_ingest(docs, "--data-dir", data, cwd=tmp_path).returncode == 0


@pytest.mark.embedder
def test_second_ingest_waits_for_the_lock_when_a_timeout_is_set(tmp_path: Path) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    holder = _hold_lock(data, 2)
    start = time.monotonic()
    done = run_ingest(
        docs, "--data-dir", data, "--json", cwd=tmp_path, env=cli_env() | {"RAG_LOCK_TIMEOUT": "60"}
    )
    holder.wait()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["added"] == 1
    assert time.monotonic() - start >= 1.0


@pytest.mark.embedder
def test_progress_bar_is_shown_on_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha")
    argv = [sys.executable, "-m", "ingest", str(docs), "--data-dir", str(tmp_path / "data")]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of 100 columns, as a user's
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        os.chdir(tmp_path)
        os.execve(sys.executable, argv, cli_env())
    output = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode()
    # tqdm draws "ingest:   0%|   | 0/1 [00:00<?, ?file/s]" first; later frames depend on timing.
    assert "ingest:" in text and "/1 [" in text and "file/s" in text
    assert "Ingested 1 file: 1 added" in text
