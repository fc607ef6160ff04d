"""Sign-in: the session secret, the start check, users, and each user's chats kept to them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import socketio

from rag.feedback import rated_answers
from rag.users import add_user, check_password, list_users, remove_user, users_path
from rag.web.sign_in import SignIn, SignInMissing, check_can_start, ensure_auth_secret, sign_in_mode
from tests.chainlit_server import app_env, running_chainlit
from tests.chat_socket import ChatSocket
from tests.fake_openai import FakeOpenAI
from tests.support import REPO, make_settings

HOLIDAYS = "How many days of paid holiday do employees get?"


def test_the_generated_session_secret_is_owner_only_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    settings = make_settings(tmp_path)
    first = ensure_auth_secret(settings)
    path = settings.data_dir / "auth-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 40
    assert ensure_auth_secret(settings) == first
    assert ensure_auth_secret(make_settings(tmp_path, auth_secret="from-env")) == "from-env"


def test_beyond_loopback_with_no_user_and_no_api_key_the_app_refuses_to_start(tmp_path: Path) -> None:
    shared = make_settings(tmp_path, bind_host="0.0.0.0")
    assert sign_in_mode(shared) is SignIn.PASSWORD
    with pytest.raises(SignInMissing, match=r"python -m rag\.users add NAME"):
        check_can_start(shared)
    check_can_start(make_settings(tmp_path, bind_host="0.0.0.0", api_key="k"))
    add_user(shared, "ana", "correct horse")
    check_can_start(shared)
    assert sign_in_mode(make_settings(tmp_path)) is SignIn.LOOPBACK
    assert sign_in_mode(make_settings(tmp_path, trust_loopback=False)) is SignIn.PASSWORD


def test_users_are_kept_as_bcrypt_hashes_owner_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    add_user(settings, "ana", "correct horse")
    add_user(settings, "ben", "battery staple")
    stored = users_path(settings).read_text()
    assert "correct horse" not in stored and json.loads(stored)["ana"].startswith("$2")
    assert stat.S_IMODE(users_path(settings).stat().st_mode) == 0o600
    assert check_password(settings, "ana", "correct horse")
    assert not check_password(settings, "ana", "battery staple")
    assert not check_password(settings, "nobody", "correct horse")
    remove_user(settings, "ben")
    assert list_users(settings) == ["ana"]


def test_the_users_command_adds_lists_and_removes(tmp_path: Path) -> None:
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}

    def users(*args: str, given: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rag.users", *args], check=False, input=given, env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert users("add", "ana", "--password-stdin", given="correct horse\n").returncode == 0
    assert users("list").stdout.split() == ["ana"]
    short = users("add", "ben", "--password-stdin", given="short\n")
    assert short.returncode == 1 and "too short" in short.stderr
    assert users("remove", "ana").returncode == 0
    assert "No users yet" in users("list").stdout


@pytest.fixture
def fake() -> FakeOpenAI:
    server = FakeOpenAI(models=["m-one"], reply="Employees get 28 days of paid holiday [1].")
    server.start()
    yield server
    server.stop()


def test_two_users_see_and_rate_only_their_own_chats(tmp_path: Path, private_store: Path, fake: FakeOpenAI) -> None:
    settings = make_settings(private_store, data_dir=private_store / "data")
    add_user(settings, "ana", "correct horse")
    add_user(settings, "ben", "battery staple")
    env = app_env(private_store, fake.base_url, RAG_TRUST_LOOPBACK="false")
    with running_chainlit(tmp_path, env) as app:
        assert not ChatSocket(app.url).sign_in()  # no password sign-in: no session
        assert not ChatSocket(app.url, login=("ana", "battery staple")).sign_in()
        with ChatSocket(app.url, login=("ana", "correct horse")) as ana:
            ana.ask(HOLIDAYS)
            ana_thread = ana.thread_id_started()
            answer_id = next(d["id"] for n, d in ana.events if n == "new_message"
                             and d.get("type") == "assistant_message" and "28 days" in d["output"])
            with ana.http() as http:
                rated = http.put("/feedback", json={"sessionId": ana.session_id, "feedback": {
                    "forId": answer_id, "threadId": ana_thread, "value": 0, "comment": "vague"}})
                assert rated.status_code == 200
                rating = rated.json()["feedbackId"]
        with (
            ChatSocket(app.url, login=("ben", "battery staple")) as ben,
            ben.http() as http,
        ):
            listed = http.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
            assert listed.status_code == 200 and listed.json()["data"] == []
            assert http.get(f"/project/thread/{ana_thread}").status_code == 401
            renamed = http.put("/project/thread", json={"threadId": ana_thread, "name": "mine"})
            assert renamed.status_code == 401
            deleted = http.request("DELETE", "/project/thread", json={"threadId": ana_thread})
            assert deleted.status_code == 401
            overruled = http.put("/feedback", json={"sessionId": ben.session_id, "feedback": {
                "forId": answer_id, "value": 1, "comment": "great"}})
            assert overruled.status_code == 401
            erased = http.request("DELETE", "/feedback", json={"feedbackId": rating})
            assert erased.status_code == 401
            unknown = http.put("/feedback", json={"sessionId": ben.session_id, "feedback": {
                "forId": "no-such-message", "value": 1}})
            assert unknown.status_code == 404
            # The in-browser search's passages are for signed-in users too.
            assert http.get("/search/data/index.json").status_code == 200
            # So are the file names that typing "@" in the composer offers.
            assert http.get("/file-names").json()["files"]
        anonymous = httpx.get(f"{app.url}/search/data/index.json", timeout=30)
        assert anonymous.status_code == 401 and "Sign in" in anonymous.text
        assert httpx.get(f"{app.url}/file-names", timeout=30).status_code == 401
        with pytest.raises(socketio.exceptions.ConnectionError):  # resuming ana's chat
            ChatSocket(app.url, login=("ben", "battery staple"), thread_id=ana_thread).connect()
        with (
            ChatSocket(app.url, login=("ana", "correct horse")) as ana,
            ana.http() as http,
        ):
            mine = http.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
            assert [t["id"] for t in mine.json()["data"]] == [ana_thread]
            assert http.put("/project/thread", json={"threadId": ana_thread, "name": "Holidays"}).status_code == 200
            assert http.get(f"/project/thread/{ana_thread}").json()["name"] == "Holidays"

    rows = rated_answers(settings)
    assert len(rows) == 1
    assert rows[0]["question"] == HOLIDAYS and rows[0]["rating"] == "down" and rows[0]["user"] == "ana"
    assert "28 days" in rows[0]["answer"] and rows[0]["comment"] == "vague"


def test_loopback_sign_in_needs_no_password_but_refuses_a_foreign_host(
    tmp_path: Path, private_store: Path, fake: FakeOpenAI
) -> None:
    with running_chainlit(tmp_path, app_env(private_store, fake.base_url)) as app:
        assert ChatSocket(app.url).sign_in()
        assert not ChatSocket(app.url, host="evil.example").sign_in()
        assert not ChatSocket(app.url, origin="http://evil.example").sign_in()
