"""The chat's websocket serves this machine's pages only, and two apps from one folder coexist.

Against real ``chainlit run app.py`` servers on loopback, with a real socket.io
client over both transports (tests/chat_socket.py) and a fake model server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import socketio
from filelock import FileLock

from rag.settings import Settings, SettingsInvalid, _validated
from rag.web.socket_guard import FILES_FOLDER, Caller, Refused, refusal, sweep_abandoned
from tests.chainlit_server import RunningChainlit, app_env, running_chainlit
from tests.chat_socket import ChatSocket, Transport
from tests.fake_openai import FakeOpenAI

REPLY = "Everyone gets 28 days of paid holiday [2]."  # [2] holds it, so the citation stands
QUESTION = "How many days of paid holiday do I get?"
EVIL = "http://evil.example"
TRANSPORTS: list[Transport] = ["websocket", "polling"]


@pytest.fixture(scope="module")
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["phi-local"], reply=REPLY) as fake:
        yield fake


@pytest.fixture(scope="module")
def app(
    corpus_store: Path, local: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningChainlit]:
    """The chat with default settings: loopback pages only."""
    env = app_env(corpus_store, local.base_url)
    with running_chainlit(tmp_path_factory.mktemp("app"), env) as running:
        yield running


def _port(app: RunningChainlit) -> str:
    return app.url.rsplit(":", 1)[1]


def _assert_refused(chat: ChatSocket, local: FakeOpenAI) -> None:
    asked = len(local.requests)
    with pytest.raises(socketio.exceptions.ConnectionError):
        chat.connect()
    assert not chat.sio.connected
    assert chat.events == []  # not even the welcome message: no chat session was made
    assert len(local.requests) == asked


def _assert_answers(chat: ChatSocket) -> None:
    with chat:
        answer = chat.ask(QUESTION)
    assert answer.text.startswith(REPLY)
    assert answer.elements, "the answer's sources are missing from the sidebar"


# --- against the real app -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_on_another_site_cannot_open_the_chat_socket(
    app: RunningChainlit, local: FakeOpenAI, transport: Transport
) -> None:
    _assert_refused(ChatSocket(app.url, origin=EVIL, transport=transport), local)


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dns_rebinding_page_cannot_open_the_chat_socket(
    app: RunningChainlit, local: FakeOpenAI, transport: Transport
) -> None:
    """evil.example resolving to 127.0.0.1: the page is same-origin with itself."""
    rebound = f"evil.example:{_port(app)}"
    chat = ChatSocket(app.url, origin=f"http://{rebound}", host=rebound, transport=transport)
    _assert_refused(chat, local)


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_loopback_page_gets_answers_with_sources_over_the_chat_socket(
    app: RunningChainlit, transport: Transport
) -> None:
    _assert_answers(ChatSocket(app.url, origin=app.url, transport=transport))


@pytest.mark.slow
def test_refused_handshake_names_the_setting_that_opens_it(app: RunningChainlit) -> None:
    handshake = f"{app.url}/ws/socket.io/?EIO=4&transport=polling"
    foreign = httpx.get(handshake, headers={"Origin": EVIL}, timeout=10)
    assert foreign.status_code == 403
    assert EVIL in foreign.text and "RAG_ALLOWED_ORIGINS" in foreign.text
    rebound = httpx.get(handshake, headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 403 and "RAG_ALLOWED_HOSTS" in rebound.text
    assert httpx.get(handshake, headers={"Origin": app.url}, timeout=10).status_code == 200


# Chainlit's own HTTP routes: the page, its settings and translations, the sign-in config,
# an element file, uploads. Each answers whoever asks unless the app guards it.
CHAINLIT_ROUTES = [
    ("GET", "/"),
    ("GET", "/login"),
    ("GET", "/project/settings?language=en-US"),
    ("GET", "/project/translations?language=en-US"),
    ("GET", "/auth/config"),
    ("GET", "/public/elements/Compare.jsx"),
    ("GET", "/project/file/some-id?session_id=some-session"),
    ("POST", "/project/file?session_id=some-session"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), CHAINLIT_ROUTES)
def test_dns_rebinding_page_gets_403_with_a_sentence_on_every_chat_route(
    app: RunningChainlit, method: str, path: str
) -> None:
    rebound = f"evil.example:{_port(app)}"
    refused = httpx.request(method, f"{app.url}{path}", headers={"Host": rebound}, timeout=30)
    assert refused.status_code == 403
    assert "not 'evil.example" in refused.text and "RAG_ALLOWED_HOSTS" in refused.text
    foreign = httpx.request(method, f"{app.url}{path}", headers={"Origin": EVIL}, timeout=30)
    assert foreign.status_code == 403 and "RAG_ALLOWED_ORIGINS" in foreign.text
    # Addressed by a loopback name, the same request reaches Chainlit.
    own = httpx.request(method, f"{app.url}{path}", headers={"Origin": app.url}, timeout=30)
    assert own.status_code != 403 or "RAG_ALLOWED" not in own.text


@pytest.mark.slow
def test_chat_page_serves_loopback_names_and_the_api_keeps_its_own_host_rule(
    app: RunningChainlit,
) -> None:
    for host in (f"127.0.0.1:{_port(app)}", f"localhost:{_port(app)}", f"[::1]:{_port(app)}"):
        page = httpx.get(f"{app.url}/", headers={"Host": host}, timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
    # /v1 judges its callers itself: its own sentence (RAG_API_KEY opens other names).
    api = httpx.get(f"{app.url}/v1/models", headers={"Host": "evil.example"}, timeout=30)
    assert api.status_code == 403 and "RAG_API_KEY" in api.json()["error"]["message"]


@pytest.mark.slow
def test_origin_and_host_the_operator_listed_may_use_the_chat_socket(
    corpus_store: Path, local: FakeOpenAI, tmp_path: Path
) -> None:
    intranet = "https://intranet.example:8443"
    env = app_env(
        corpus_store,
        local.base_url,
        RAG_ALLOWED_ORIGINS=f"{intranet}, http://other.example",
        RAG_ALLOWED_HOSTS="chat.lan",
    )
    with running_chainlit(tmp_path, env) as app:
        _assert_answers(ChatSocket(app.url, origin=intranet))
        # The app's own page, opened as http://chat.lan:PORT on the network.
        named = f"chat.lan:{_port(app)}"
        _assert_answers(ChatSocket(app.url, origin=f"http://{named}", host=named))
        _assert_refused(ChatSocket(app.url, origin=EVIL), local)
        _assert_refused(ChatSocket(app.url, origin=intranet, host="evil.example"), local)
        # The page itself follows the same lists.
        assert httpx.get(f"{app.url}/", headers={"Host": named}, timeout=30).status_code == 200
        assert httpx.get(f"{app.url}/", headers={"Host": "other.lan"}, timeout=30).status_code == 403


@pytest.mark.slow
def test_stopping_one_app_keeps_the_sources_of_another_from_the_same_folder(
    corpus_store: Path, local: FakeOpenAI, tmp_path: Path
) -> None:
    env = app_env(corpus_store, local.base_url)
    (tmp_path / "second").mkdir()
    # Both run from one real folder: the second's app folder is a link to the first's.
    (tmp_path / "first" / "approot").mkdir(parents=True)
    (tmp_path / "second" / "approot").symlink_to(tmp_path / "first" / "approot")
    files_root = corpus_store / "data" / FILES_FOLDER
    others = _folders(files_root)  # of apps other tests left running on this store
    with running_chainlit(tmp_path / "second", env) as second:
        with running_chainlit(tmp_path / "first", env) as first:
            _assert_answers(ChatSocket(first.url, origin=first.url))
            folders_while_both_ran = _folders(files_root) - others
        with ChatSocket(second.url, origin=second.url) as chat:
            answer = chat.ask(QUESTION)
            assert answer.text.startswith(REPLY)
            assert answer.elements
            passages = [chat.element_text(el) for el in answer.elements]
        assert "holiday" in " ".join(passages).lower()
        # Each app had its own folder, and the first deleted its own and nothing else.
        assert len(folders_while_both_ran) == 2
        left = _folders(files_root) - others
        assert len(left) == 1 and left < folders_while_both_ran
    assert _folders(files_root) - others == set()


def _folders(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


# --- the parts, without a server -----------------------------------------------------------------


def test_start_removes_the_files_of_instances_that_were_killed(tmp_path: Path) -> None:
    killed = tmp_path / "111-dead"
    (killed / "session").mkdir(parents=True)
    (killed / "session" / "source.txt").write_text("passage")
    (tmp_path / "111-dead.lock").touch()  # its holder died: nobody holds the lock
    running = tmp_path / "222-live"
    running.mkdir()
    held = FileLock(tmp_path / "222-live.lock", timeout=0, thread_local=False)
    held.acquire()
    try:
        assert sweep_abandoned(tmp_path) == [killed]
    finally:
        held.release()
    assert not killed.exists() and not (tmp_path / "111-dead.lock").exists()
    assert running.is_dir()


def _settings(**values: object) -> Settings:
    return _validated(lambda: Settings(_env_file=None, **values))


@pytest.mark.parametrize(
    ("origins", "hosts", "expected"),
    [
        ((), ("127.0.0.1:8000",), None),  # not from a web page (curl, Open WebUI's server)
        (("http://localhost:3000",), ("localhost:8000",), None),
        (("http://[::1]:8000",), ("[::1]:8000",), None),
        ((EVIL,), ("127.0.0.1:8000",), Refused.FOREIGN_ORIGIN),
        (("null",), ("127.0.0.1:8000",), Refused.FOREIGN_ORIGIN),  # sandboxed frame, file://
        (("http://127.0.0.1:8000", EVIL), ("127.0.0.1:8000",), Refused.FOREIGN_ORIGIN),
        (("http://evil.example:8000",), ("evil.example:8000",), Refused.FOREIGN_HOST),
        ((), ("evil.example",), Refused.FOREIGN_HOST),
        ((), (), Refused.FOREIGN_HOST),
        ((), ("127.0.0.1", "evil.example"), Refused.FOREIGN_HOST),
        ((), ("[::1",), Refused.FOREIGN_HOST),
    ],
)
def test_only_this_machines_pages_and_names_pass_by_default(
    origins: tuple[str, ...], hosts: tuple[str, ...], expected: Refused | None
) -> None:
    refused = refusal(Caller(origins=origins, hosts=hosts), _settings())
    assert (refused and refused.reason) == expected


@pytest.mark.parametrize(
    ("origins", "hosts", "expected"),
    [
        (("https://intranet.example:8443",), ("127.0.0.1:8000",), None),
        (("HTTPS://Intranet.Example:8443/",), ("127.0.0.1:8000",), None),
        (("https://intranet.example",), ("127.0.0.1:8000",), Refused.FOREIGN_ORIGIN),
        (("http://chat.lan:8000",), ("chat.lan:8000",), None),  # its own page on the network
        (("http://chat.lan:9999",), ("chat.lan:8000",), Refused.FOREIGN_ORIGIN),
        ((), ("[fd00:0::5]:8000",), None),
        ((), ("other.lan",), Refused.FOREIGN_HOST),
    ],
)
def test_listed_origins_and_hosts_pass(
    origins: tuple[str, ...], hosts: tuple[str, ...], expected: Refused | None
) -> None:
    settings = _settings(
        allowed_origins="https://intranet.example:8443", allowed_hosts="chat.lan, fd00::5"
    )
    refused = refusal(Caller(origins=origins, hosts=hosts), settings)
    assert (refused and refused.reason) == expected


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("allowed_origins", "*", "RAG_ALLOWED_ORIGINS"),
        ("allowed_origins", "https://intranet.example/chat", "RAG_ALLOWED_ORIGINS"),
        ("allowed_hosts", "chat.lan:8000", "RAG_ALLOWED_HOSTS"),
        ("allowed_hosts", "http://chat.lan", "RAG_ALLOWED_HOSTS"),
    ],
)
def test_a_malformed_allowed_list_is_refused_with_a_sentence_naming_it(
    field: str, value: str, setting: str
) -> None:
    with pytest.raises(SettingsInvalid, match=setting):
        _settings(**{field: value})


def test_allowed_lists_are_read_from_comma_separated_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAG_ALLOWED_ORIGINS", "https://a.example, http://b.example:8080/")
    monkeypatch.setenv("RAG_ALLOWED_HOSTS", "Chat.LAN,,192.168.1.20")
    settings = Settings(_env_file=None)
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert settings.allowed_hosts == ("chat.lan", "192.168.1.20")
