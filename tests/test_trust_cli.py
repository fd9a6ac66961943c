"""Credentials that go only where they belong, endpoints that cannot be redirected, and a
CLI that ends every user-caused error in one line and exit 2 with nothing half-written.

Each test reproduces a way the product was broken (a credential read from any environment
variable, an adapter path to another host, secrets in endpoint URLs, tracebacks from the
CLI, a budget found too small after paying, registration accepting what fails later,
unsafe names, photo folders that follow links or read before checking the size) and shows
it refused now. Store writes run on SQLite and PostgreSQL (the ``db_url`` fixture); API
calls go to a real HTTP server on 127.0.0.1 that records what it received.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from audit_lib import registry
from audit_lib.cli import app
from audit_lib.config import get_settings
from audit_lib.registry import RegistryError
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel, AuditRun, DataSubject, EvidenceItem

runner = CliRunner()
CRED = "AUDIT_CRED_TRUST_TEST"
SECRET = "sk-trust-test-Qx81-secret"


# --- a real HTTP server that records what reaches it -------------------------------------
class _Recorder:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers, self.requests = status, headers, []


@contextmanager
def recording_api(status: int = 200, headers: dict[str, str] | None = None) -> Iterator[tuple[str, _Recorder]]:
    """An HTTP server on 127.0.0.1 answering every request with ``status``; ``rec.requests``
    holds (method, path, headers) of each request received."""
    rec = _Recorder(status, headers or {})

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            rec.requests.append((self.command, self.path, dict(self.headers)))
            body = b'{"error": "no"}'
            self.send_response(rec.status)
            for k, v in rec.headers.items():
                self.send_header(k, v)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rec
    finally:
        server.shutdown()
        server.server_close()


def _models(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(AuditedModel))


def _add_api(name: str, endpoint: str, *extra: str):  # noqa: ANN202 - click Result
    return runner.invoke(app, ["models", "add", "--name", name, "--role", "suspect", "--endpoint", endpoint,
                               "--preset", "encoder-audit", "--embedding-dim", "64", *extra])


def _one_line_exit_2(r) -> str:  # noqa: ANN001
    out = r.output.strip()
    assert r.exit_code == 2, (r.output, r.exception)
    assert "Traceback" not in out and len(out.splitlines()) == 1 and out.startswith("error: "), out
    return out


# --- credentials ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["AUDIT_WEB_SECRET_KEY", "DATABASE_URL", "AUDIT_DATABASE_URL", "HOME",
                                  "AUDIT_CRED_", "AUDIT_CRED_X;rm"])
def test_credential_outside_the_allow_list_refused_at_registration(db_url, name):
    out = _one_line_exit_2(_add_api("vendor", "http://127.0.0.1:9", "--credential", name))
    assert "AUDIT_CRED_" in out
    assert _models(db_url) == 0


def test_credential_refused_at_update_and_probe(db_url):
    assert _add_api("vendor", "http://127.0.0.1:9", "--credential", CRED).exit_code == 0
    out = _one_line_exit_2(runner.invoke(app, ["models", "update", "vendor", "--credential", "AUDIT_WEB_SECRET_KEY"]))
    assert "AUDIT_CRED_" in out
    with session_scope(db_url) as s:
        assert registry.get_model(s, "vendor").credential_name == CRED
    _one_line_exit_2(runner.invoke(app, ["models", "probe", "--endpoint", "http://127.0.0.1:9", "--preset",
                                         "encoder-audit", "--embedding-dim", "64", "--credential", "DATABASE_URL"]))


def test_web_secret_key_is_never_sent_even_from_an_old_row(monkeypatch):
    """A row stored before the rule names AUDIT_WEB_SECRET_KEY: the transport refuses to
    read it, and the fake API never sees it."""
    from audit_lib.encoders.remote import CredentialError, RemoteEncoder

    monkeypatch.setenv("AUDIT_WEB_SECRET_KEY", SECRET)
    with recording_api() as (url, rec):
        enc = RemoteEncoder(url, None, "AUDIT_WEB_SECRET_KEY", embedding_dim=8, max_retries=0)
        with pytest.raises(CredentialError, match="AUDIT_CRED_"):
            enc.encode_images([b"\x89PNG not sent"])
        enc.close()
    assert rec.requests == []


def test_declared_credential_is_sent_to_the_registered_host_only(monkeypatch):
    from audit_lib.encoders.remote import CredentialError, RemoteEncoder

    monkeypatch.setenv(CRED, SECRET)
    with recording_api(status=401) as (url, rec):
        enc = RemoteEncoder(url, None, CRED, embedding_dim=8, max_retries=0)
        with pytest.raises(CredentialError, match="refused the credential") as err:
            enc.encode_images([b"img"])
        enc.close()
    assert SECRET not in str(err.value)
    assert len(rec.requests) == 1 and rec.requests[0][2].get("Authorization") == f"Bearer {SECRET}"


# --- endpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ['{"images": {"path": ":9999/v1/embed/images"}}',
                                     '{"info": {"path": ":1/v1/info"}}'])
def test_adapter_path_to_another_host_refused_at_add_and_update(db_url, adapter):
    out = _one_line_exit_2(_add_api("vendor", "http://127.0.0.1:9", "--credential", CRED, "--adapter", adapter))
    assert "not the registered host 127.0.0.1:9" in out
    assert _models(db_url) == 0
    assert _add_api("vendor", "http://127.0.0.1:9", "--credential", CRED).exit_code == 0
    _one_line_exit_2(runner.invoke(app, ["models", "update", "vendor", "--adapter", adapter]))
    _one_line_exit_2(runner.invoke(app, ["models", "update", "vendor", "--adapter", '{"images": {"path": "//evil.example/x"}}']))
    with session_scope(db_url) as s:
        assert registry.get_model(s, "vendor").adapter["images"]["path"] == "/v1/embed/images"


@pytest.mark.parametrize("endpoint,says", [
    ("http://169.254.169.254/latest/meta-data", "metadata"),
    ("http://2852039166/latest", "metadata"),  # 169.254.169.254 as one number
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1", "metadata"),
    ("http://169.254.10.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://10.1.2.3/v1", "private"),
    ("http://192.168.0.7/v1", "private"),
    ("http://[fd12:3456::1]/v1", "private"),
    ("http://user:pass@api.example.com/v1", "--credential"),
    ("https://api.example.com/v1?api_key=sk-abc", "--credential"),
    ("https://api.example.com/v1?Token=abc", "--credential"),
    ("https://api.example.com/v1?x=1&SIG=abc", "--credential"),
])
def test_endpoint_refused(endpoint, says, monkeypatch):
    monkeypatch.delenv("AUDIT_ALLOW_PRIVATE_ENDPOINTS", raising=False)
    get_settings.cache_clear()
    with pytest.raises(RegistryError, match=says):
        registry.check_endpoint_url(endpoint)


def test_loopback_allowed_and_private_allowed_by_the_setting(monkeypatch):
    for ok in ("http://127.0.0.1:8000/v1", "http://[::1]:9/", "http://localhost:9/",
               "https://api.example.com/v1?model=clip"):
        assert registry.check_endpoint_url(ok) == ok
    monkeypatch.setenv("AUDIT_ALLOW_PRIVATE_ENDPOINTS", "1")
    get_settings.cache_clear()
    try:
        assert registry.check_endpoint_url("http://10.1.2.3/v1") == "http://10.1.2.3/v1"
        with pytest.raises(RegistryError, match="metadata"):
            registry.check_endpoint_url("http://169.254.169.254/")
    finally:
        monkeypatch.delenv("AUDIT_ALLOW_PRIVATE_ENDPOINTS")
        get_settings.cache_clear()


def test_secret_in_endpoint_refused_and_never_printed(db_url):
    out = _one_line_exit_2(_add_api("vendor", "http://127.0.0.1:9/v1?api_key=sk-in-url", "--credential", CRED))
    assert "--credential" in out and "sk-in-url" not in out
    out = _one_line_exit_2(_add_api("vendor", "http://bob:hunter2@127.0.0.1:9/v1"))
    assert "hunter2" not in out
    assert _models(db_url) == 0
    # a row stored before the rule: list and show mask it
    with session_scope(db_url) as s:
        s.add(AuditedModel(name="legacy", kind="api", role="suspect", capabilities=["image"],
                           endpoint_url="http://bob:hunter2@127.0.0.1:9/v1?key=sk-old&model=m",
                           adapter={"embedding_dim": 8}))
    for args in (["models", "list"], ["models", "list", "--json"], ["models", "show", "legacy"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "hunter2" not in r.output and "sk-old" not in r.output and "<secret>" in r.output


# --- the one place that maps product errors to one line --------------------------------
def test_product_errors_become_one_line_and_bugs_keep_their_traceback():
    from audit_lib.cli_errors import ErrorMappingGroup
    from audit_lib.encoders.loading import CheckpointError
    from audit_lib.encoders.remote import BudgetExhausted, CredentialError, RemoteUnavailable

    demo = typer.Typer(cls=ErrorMappingGroup)
    raised = {"checkpoint": CheckpointError("weights w.pt: refused, the pickle holds more than tensors"),
              "remote": RemoteUnavailable("http://x: gave up after 5 attempts; last: HTTP 503"),
              "credential": CredentialError("credential 'AUDIT_CRED_A': no environment variable"),
              "budget": BudgetExhausted("http://x: the query budget of 5 queries for this run is spent\nmore")}
    for name, exc in raised.items():
        demo.command(name)(lambda exc=exc: (_ for _ in ()).throw(exc))
    demo.command("bug")(lambda: 1 / 0)
    for name, exc in raised.items():
        out = _one_line_exit_2(runner.invoke(demo, [name]))
        assert str(exc).splitlines()[0] in out
    r = runner.invoke(demo, ["bug"])
    assert isinstance(r.exception, ZeroDivisionError)  # a real bug is not hidden


def _subject(face_dir: Path) -> int:
    r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--legal-basis", "GDPR 6(1)(f)",
                            "--photos", str(face_dir)])
    assert r.exit_code == 0, r.output
    with session_scope() as s:
        return s.scalar(select(DataSubject.id))


def test_api_failures_during_an_audit_end_in_one_line(db_url, face_dir, monkeypatch):
    """CredentialError (401) and RemoteUnavailable (429 with a long Retry-After) from a
    privacy audit: one line, exit 2, the run closed as failed, no evidence."""
    sid = _subject(face_dir)
    monkeypatch.setenv(CRED, SECRET)
    for status, headers, says in ((401, {}, "refused the credential"),
                                  (429, {"Retry-After": "99999"}, "rate limited")):
        with recording_api(status, headers) as (url, rec):
            name = f"api-{status}"
            assert _add_api(name, url, "--credential", CRED).exit_code == 0
            r = runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", name,
                                    "--run-key", name])
            out = _one_line_exit_2(r)
            assert says in out and SECRET not in out
            assert len(rec.requests) == 1
        with session_scope() as s:
            assert s.scalar(select(AuditRun.status).where(AuditRun.run_key == name)) == "failed"


def test_budget_too_small_is_refused_before_the_first_query(db_url, face_dir, monkeypatch):
    sid = _subject(face_dir)
    monkeypatch.setenv(CRED, SECRET)
    with recording_api() as (url, rec):
        assert _add_api("vendor", url, "--credential", CRED, "--budget", "5").exit_code == 0
        out = _one_line_exit_2(runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "vendor"]))
        assert "needs 8 queries" in out and "budget is 5" in out
        assert rec.requests == []  # nothing paid for
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(AuditRun)) == 0
        assert s.scalar(select(func.count()).select_from(EvidenceItem)) == 0


# --- registration refuses what would fail later ---------------------------------------
@pytest.mark.parametrize("args,says", [
    (["--name", " vendor"], "leading or trailing whitespace"),
    (["--name", "vendor\t"], "leading or trailing whitespace"),
    (["--name", "ven\x1bdor"], "U+001B"),
    (["--name", "ven\u202edor"], "U+202E"),
    (["--name", "1234"], "all digits"),
    (["--name", "vendor", "--budget", str(10**19)], "query budget"),
    (["--name", "vendor", "--budget", "0"], "query budget"),
    (["--name", "vendor", "--adapter", "[1, 2]"], "expected a JSON object, got list"),
    (["--name", "vendor", "--adapter", '{"images": [1]}'], "adapter.images"),
    (["--name", "vendor", "--adapter", '{"body": ["x"]}'], "adapter.body"),
])
def test_bad_api_registration_one_line(db_url, args, says):
    r = runner.invoke(app, ["models", "add", "--role", "suspect", "--endpoint", "http://127.0.0.1:9",
                            "--preset", "encoder-audit", "--embedding-dim", "64", *args])
    assert says in _one_line_exit_2(r)
    assert _models(db_url) == 0


def test_adapter_list_and_huge_budget_refused_at_update(db_url):
    assert _add_api("vendor", "http://127.0.0.1:9").exit_code == 0
    for args, says in ((["--adapter", "[1]"], "got list"), (["--adapter", '{"info": []}'], "adapter.info"),
                       (["--budget", str(10**30)], "query budget")):
        assert says in _one_line_exit_2(runner.invoke(app, ["models", "update", "vendor", *args]))


def _pickle_that_runs_code(path: Path) -> Path:
    import pickle

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("touch " + str(path.with_suffix(".ran")),))

    path.write_bytes(pickle.dumps({"w": Boom()}))
    return path


def test_checkpoint_registration_loads_what_it_can(db_url, small_cnn_weights, tiny_clip_weights, tmp_path):
    arch, weights = small_cnn_weights
    clip_arch, clip_weights = tiny_clip_weights
    cases = [
        (["--architecture", "torchvision:resnet18@0", "--weights", str(weights)], "@0 is not an input size"),
        (["--architecture", "torchvision:resnet18@100000", "--weights", str(weights)], "@100000"),
        (["--architecture", "nosuch:net", "--weights", str(weights)], "unknown family"),
        (["--architecture", "small_cnn:no-such-config", "--weights", str(weights)], "no config"),
        (["--architecture", arch, "--weights", str(clip_weights)], "do not fit the architecture"),
        (["--architecture", clip_arch, "--weights", str(weights)], "do not fit the architecture"),
        (["--architecture", arch, "--weights", str(_pickle_that_runs_code(tmp_path / "evil.pt"))], "refused"),
    ]
    for args, says in cases:
        r = runner.invoke(app, ["models", "add", "--name", "ckpt", "--role", "suspect", *args])
        assert says in _one_line_exit_2(r), args
    assert not (tmp_path / "evil.ran").exists()
    assert _models(db_url) == 0
    r = runner.invoke(app, ["models", "add", "--name", "ckpt", "--role", "suspect", "--architecture", arch,
                            "--weights", str(weights)])
    assert r.exit_code == 0, r.output
    assert "do not fit" in _one_line_exit_2(runner.invoke(app, ["models", "update", "ckpt", "--weights",
                                                                str(clip_weights)]))
    with session_scope(db_url) as s:
        assert registry.get_model(s, "ckpt").weights_path == str(weights.resolve())


# --- subjects and photo folders ----------------------------------------------------------
@pytest.mark.parametrize("name", ["Ada\nExample", "Ada\rExample", "Ada\x1b[31mExample", "Ada \u202eelpmaxE",
                                  "Ada \u2066Example", "Ada\x00Example"])
def test_subject_names_with_control_or_bidi_characters_refused(db_url, face_dir, name):
    r = runner.invoke(app, ["subjects", "add", "--name", name, "--legal-basis", "GDPR 6(1)(f)",
                            "--photos", str(face_dir)])
    assert "not allowed" in _one_line_exit_2(r)
    r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--alias", name,
                            "--legal-basis", "GDPR 6(1)(f)", "--photos", str(face_dir)])
    assert "alias" in _one_line_exit_2(r)
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(DataSubject)) == 0


def test_subjects_list_escapes_what_is_already_stored(db_url):
    with session_scope(db_url) as s:
        s.add(DataSubject(pseudonym="subject-legacy01", name="Eve\x1b[2J\u202eexample", aliases=[],
                          legal_basis="consent"))
    r = runner.invoke(app, ["subjects", "list"])
    assert r.exit_code == 0
    assert "\x1b" not in r.output and "\u202e" not in r.output
    assert "Eve\\u001b[2J\\u202eexample" in r.output


def test_photo_folder_does_not_follow_links_out_of_the_folder(db_url, face_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.pgm").write_bytes((face_dir / "1.pgm").read_bytes()[::-1][::-1])
    (face_dir / "4.pgm").symlink_to(outside / "private.pgm")
    r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--legal-basis", "GDPR 6(1)(f)",
                            "--photos", str(face_dir)])
    assert "outside the folder" in _one_line_exit_2(r)
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(DataSubject)) == 0


def test_oversized_photo_refused_by_its_size_without_reading_it(db_url, face_dir, monkeypatch):
    monkeypatch.setenv("AUDIT_MAX_IMAGE_BYTES", "100000")
    get_settings.cache_clear()
    with open(face_dir / "huge.png", "wb") as fh:  # 1 GiB, sparse: costs no disk
        fh.truncate(1 << 30)
    import tracemalloc

    tracemalloc.start()
    try:
        r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--legal-basis", "GDPR 6(1)(f)",
                                "--photos", str(face_dir)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "1073741824 bytes is over the limit of 100000 bytes" in _one_line_exit_2(r)
    assert peak < 64 * 1024 * 1024, peak  # reading the file first took 1.1 GB of memory


# --- outputs checked before work starts --------------------------------------------------
def test_unwritable_out_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    r = runner.invoke(app, ["steal", "--target", "no-such-model", "--out", str(blocker / "curves")])
    assert "is not a folder" in _one_line_exit_2(r)
    r = runner.invoke(app, ["bench", "theft", "--out", str(tmp_path)])
    assert "is a folder" in _one_line_exit_2(r)
    r = runner.invoke(app, ["eval", "privacy", "--json", str(blocker / "x.json")])
    assert "is not a folder" in _one_line_exit_2(r)
    assert time.perf_counter() - t0 < 10  # refused before the zoo or a model is touched


def test_json_of_refusal_is_not_half_written(db_url):
    """A refused update changes nothing: the stored adapter is exactly as before."""
    assert _add_api("vendor", "http://127.0.0.1:9", "--credential", CRED).exit_code == 0
    with session_scope(db_url) as s:
        before = json.dumps(registry.get_model(s, "vendor").adapter, sort_keys=True)
    _one_line_exit_2(runner.invoke(app, ["models", "update", "vendor", "--endpoint", "http://169.254.169.254/",
                                         "--budget", "10"]))
    with session_scope(db_url) as s:
        m = registry.get_model(s, "vendor")
        assert json.dumps(m.adapter, sort_keys=True) == before
        assert m.endpoint_url == "http://127.0.0.1:9" and m.query_budget is None


def test_a_store_without_its_schema_is_one_line_naming_the_migration(tmp_path, monkeypatch):
    """Any command on a store that was never migrated: the hint to run the migrations, exit 2,
    not a database traceback."""
    monkeypatch.setenv("AUDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["report", "render", "--case", "subject:1"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "db upgrade" in result.output and "Traceback" not in result.output
