"""Access keys (library, CLI, HTTP) and CSRF protection of the web app."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import stat
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from ml4paleo import keys
from ml4paleo.cli import main as cli
from webapp import create_app


@pytest.fixture
def app(tmp_path):
    app = create_app(data_dir=tmp_path / "data")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def test_key_library_stores_only_keyed_digests(tmp_path):
    info, secret = keys.add_key(tmp_path, "alice")
    info2, secret2 = keys.add_key(tmp_path, "bob")
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text and secret2 not in text
    stored = json.loads(text)["keys"]
    assert [k["scheme"] for k in stored] == ["hmac-sha256"] * 2
    assert len(stored[0]["digest"]) == 64 and stored[0]["digest"] != stored[1]["digest"]
    # the digest is HMAC-SHA-256 of the key under the server secret (0600, made once)
    secret_file = tmp_path / "keys.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    server = secret_file.read_text().strip().encode()
    assert stored[0]["digest"] == hmac.new(server, secret.encode(), hashlib.sha256).hexdigest()
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    assert keys.verify_key(tmp_path, secret)["name"] == "alice"
    assert keys.verify_key(tmp_path, secret2)["name"] == "bob"
    assert keys.verify_key(tmp_path, secret[:-1] + "x") is None
    assert keys.verify_key(tmp_path, "") is None and keys.verify_key(tmp_path, None) is None
    assert keys.verify_key(tmp_path, "x" * 201) is None
    with pytest.raises(ValueError, match="already exists"):
        keys.add_key(tmp_path, "alice")
    with pytest.raises(ValueError, match="key name"):
        keys.add_key(tmp_path, "../evil")
    assert [k["name"] for k in keys.list_keys(tmp_path)] == ["alice", "bob"]
    assert keys.revoke_key(tmp_path, "alice") and not keys.revoke_key(tmp_path, "alice")
    assert keys.verify_key(tmp_path, secret) is None
    assert secret_file.read_text().strip().encode() == server  # never replaced


def test_server_secret_is_created_once_by_racing_processes(tmp_path):
    """Eight processes adding keys at once all end up with the same server secret and all
    eight keys, so every key verifies afterwards (a replaced secret would void the others'
    keys; an unlocked read-modify-write of keys.json would lose some)."""
    code = ("import sys; from ml4paleo import keys; "
            "print(keys.add_key(sys.argv[1], sys.argv[2])[1])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"k{i}"],
                              stdout=subprocess.PIPE, text=True) for i in range(8)]
    made = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # the key file's read-modify-write holds a file lock: no add is lost
    assert {k["name"] for k in keys.list_keys(tmp_path)} == {f"k{i}" for i in range(8)}
    for i, secret in enumerate(made):
        assert keys.verify_key(tmp_path, secret)["name"] == f"k{i}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keys.secret")]


def test_legacy_pbkdf2_keys_are_migrated_on_first_use(tmp_path):
    """A key file of the previous version (salted PBKDF2) keeps working: the first use is
    checked with PBKDF2 once and the record rewritten as an HMAC digest, after which a
    check costs microseconds (measured against the PBKDF2 check)."""
    secret = "m4p_" + "A" * 43
    salt = bytes(range(16))
    legacy = {"name": "old", "prefix": secret[:8], "salt": salt.hex(),
              "hash": hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 100_000).hex(),
              "created_at": "2026-01-01T00:00:00.000000Z"}
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [legacy]}))
    assert keys.verify_key(tmp_path, secret[:8] + "B" * 43) is None  # wrong key, same prefix
    t0 = time.perf_counter()
    assert keys.verify_key(tmp_path, secret)["name"] == "old"
    slow = time.perf_counter() - t0
    stored = json.loads((tmp_path / "keys.json").read_text())["keys"][0]
    assert stored["scheme"] == "hmac-sha256" and "salt" not in stored and "hash" not in stored
    assert stored["created_at"] == legacy["created_at"] and stored["prefix"] == secret[:8]
    t0 = time.perf_counter()
    for _ in range(100):
        assert keys.verify_key(tmp_path, secret)["name"] == "old"
    fast = (time.perf_counter() - t0) / 100
    assert fast < slow / 20, (fast, slow)
    assert fast < 0.002, fast  # microseconds; 2 ms is a bound a loaded machine keeps
    assert keys.verify_key(tmp_path, secret[:8] + "B" * 43) is None


def test_failed_key_attempts_are_rate_limited_per_client(tmp_path):
    app = create_app(data_dir=tmp_path / "data", auth_failures_burst=3,
                     auth_failures_per_minute=60)
    _, secret = keys.add_key(tmp_path / "data", "lab")
    client = app.test_client()
    bad = {"X-API-Key": "m4p_wrong"}
    codes = [client.get("/api/jobs", headers=bad).status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    r = client.get("/api/jobs", headers=bad)
    assert r.status_code == 429 and r.is_json and "too many" in r.get_json()["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    # the budget is spent: even a good key is not checked for this client until it refills
    assert client.get("/api/jobs", headers={"X-API-Key": secret}).status_code == 429
    r = client.post("/api/auth", json={"key": "m4p_wrong"})
    assert r.status_code == 429 and "Retry-After" in r.headers
    # another client address is not affected; requests without a key spend nothing
    other = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/api/jobs", headers={"X-API-Key": secret},
                      environ_base=other).status_code == 200
    for _ in range(10):
        assert client.get("/api/jobs", environ_base=other).status_code == 401
    assert client.get("/api/jobs", headers={"X-API-Key": secret},
                      environ_base=other).status_code == 200
    time.sleep(1.1)  # one token a second
    assert client.get("/api/jobs", headers={"X-API-Key": secret}).status_code == 200


def test_keys_cli(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["keys", "list", "--data", str(tmp_path)])
    assert out.exit_code == 0 and "No keys" in out.output
    out = runner.invoke(cli, ["keys", "add", "lab-pc", "--data", str(tmp_path)])
    assert out.exit_code == 0, out.output
    secret = out.output.strip().splitlines()[-1]
    assert keys.verify_key(tmp_path, secret)["name"] == "lab-pc"
    out = runner.invoke(cli, ["keys", "list", "--data", str(tmp_path)])
    assert "lab-pc" in out.output and secret not in out.output
    out = runner.invoke(cli, ["keys", "add", "bad name!", "--data", str(tmp_path)])
    assert out.exit_code == 1 and "Error:" in out.output
    assert runner.invoke(cli, ["keys", "revoke", "lab-pc", "--data", str(tmp_path)]).exit_code == 0
    out = runner.invoke(cli, ["keys", "revoke", "lab-pc", "--data", str(tmp_path)])
    assert out.exit_code == 1 and "no key named" in out.output


def test_api_requires_a_key_once_one_exists(app, client):
    data_dir = app.config["ML4PALEO_SETTINGS"].data_dir
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/auth").get_json() == {"auth_required": False, "authenticated": True}
    _, secret = keys.add_key(data_dir, "lab")
    r = client.get("/api/jobs")
    assert r.status_code == 401 and "X-API-Key" in r.get_json()["error"]
    assert client.post("/api/job/new", json={"name": "x"}).status_code == 401
    assert client.get("/api/jobs", headers={"X-API-Key": "m4p_wrong"}).status_code == 401
    assert client.get("/api/jobs", headers={"X-API-Key": secret}).status_code == 200
    r = client.post("/api/job/new", json={"name": "x"}, headers={"X-API-Key": secret})
    assert r.status_code in (200, 201)
    # open routes: the OpenAPI document, /api/auth and the page shells
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/api/auth").get_json() == {"auth_required": True, "authenticated": False}
    # the browser: POST /api/auth with the key sets an HttpOnly same-site cookie
    assert client.post("/api/auth", json={"key": "nope"}).status_code == 401
    assert client.post("/api/auth", json={}).status_code == 400
    r = client.post("/api/auth", json={"key": secret})
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "ml4paleo_key=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/jobs").status_code == 200  # cookie now
    # a state change authenticated only by the cookie needs the CSRF token
    assert client.post("/api/job/new", json={"name": "y"}).status_code == 403
    token = client.get_cookie("ml4paleo_csrf").value
    r = client.post("/api/job/new", json={"name": "y"}, headers={"X-CSRF-Token": token})
    assert r.status_code in (200, 201)
    client.delete("/api/auth", headers={"X-CSRF-Token": token})
    assert client.get("/api/jobs").status_code == 401


def test_csrf_rules(client):
    client.get("/")  # sets the CSRF cookie
    token = client.get_cookie("ml4paleo_csrf").value
    new = "/api/job/new"
    body = {"name": "csrf"}
    # non-browser clients (the Python client, curl) send no Origin / Sec-Fetch-Site
    assert client.post(new, json=body).status_code in (200, 201)
    # same-origin browser requests (the original Dropzone page) pass
    assert client.post(new, json=body, headers={"Origin": "http://localhost",
                                                 "Sec-Fetch-Site": "same-origin"}
                       ).status_code in (200, 201)
    # cross-site forms and fetches are refused
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "http://a.localhost"},
                    {"Referer": "https://evil.example/page"}, {"Origin": "null"}):
        r = client.post(new, data={"name": "x"}, headers=headers)
        assert r.status_code == 403, headers
        assert r.is_json
    # a wrong token is refused even from the same origin; the right one passes
    assert client.post(new, json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    r = client.post(new, json=body, headers={"X-CSRF-Token": token,
                                             "Sec-Fetch-Site": "cross-site"})
    assert r.status_code in (200, 201)
    # safe methods are never blocked
    assert client.get("/api/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_hostile_json_and_methods_are_json_4xx(client):
    """JSON nested deeper than the parser's recursion limit is a 400, not a 500
    (RecursionError is not a ValueError); a 405 keeps its Allow header."""
    rid = client.post("/api/job/new", json={"name": "n"}).get_json()["job_id"]
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    for url in ("/api/job/new", "/api/job/status", "/api/job/status/upload-complete",
                f"/api/job/{rid}/rename", "/api/auth", f"/api/job/{rid}/segment",
                f"/api/job/{rid}/mesh"):
        r = client.post(url, data=deep, content_type="application/json")
        assert 400 <= r.status_code < 500, (url, r.status_code, r.data[:200])
        assert r.is_json and "error" in r.get_json(), url
    r = client.put("/api/job/new")
    assert r.status_code == 405 and r.is_json
    assert set(r.headers["Allow"].split(", ")) >= {"POST"}


def test_only_uploads_take_big_bodies(app, client):
    """A JSON route refuses a body over ML4PALEO_MAX_BODY_BYTES (413) instead of reading
    gigabytes into memory; /api/upload keeps the upload limit."""
    app.config["ML4PALEO_MAX_BODY_BYTES"] = 1024
    big = '{"name": "' + "x" * 4096 + '"}'
    r = client.post("/api/job/new", data=big, content_type="application/json")
    assert r.status_code == 413 and r.is_json and "error" in r.get_json()
    assert client.post("/api/job/new", json={"name": "small"}).status_code == 201
    jid = client.post("/api/job/new", json={"name": "u"}).get_json()["job_id"]
    r = client.post("/api/upload", headers={"X-Job-ID": jid},
                    data={"file": (io.BytesIO(b"z" * 8192), "vol.npy")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["received_bytes"] == 8192


def test_non_ascii_csrf_and_key_headers_are_403_401(app, client):
    """hmac.compare_digest refuses non-ASCII str (TypeError): a forged token or key with
    such characters is an ordinary refusal, not a 500."""
    client.set_cookie("ml4paleo_csrf", "abc")
    for token in ("\u00e9", "\u00ff\u00fe", "abc\u00e9"):
        r = client.post("/api/job/new", json={"name": "x"}, headers={"X-CSRF-Token": token})
        assert r.status_code == 403 and r.is_json, (token, r.status_code)
    client.set_cookie("ml4paleo_csrf", "\u00e9t\u00e9")
    r = client.post("/api/job/new", json={"name": "x"}, headers={"X-CSRF-Token": "\u00e9t\u00e9"})
    assert r.status_code == 201
    keys.add_key(app.config["ML4PALEO_SETTINGS"].data_dir, "alice")
    r = client.get("/api/jobs", headers={"X-API-Key": "\u00ff\u00fe"})
    assert r.status_code == 401 and r.is_json
    client.set_cookie("ml4paleo_key", "\u00e9")
    assert client.get("/api/jobs").status_code == 401


def _url_for_rule(rule, job_id: str) -> str:
    """A URL of ``rule`` with ``job_id`` for <job_id> and plausible values elsewhere."""
    values = {}
    for name in rule.arguments:
        conv = rule._converters[name]  # noqa: SLF001 - the converter tells int from path
        values[name] = (job_id if name == "job_id" else
                        1 if type(conv).__name__ == "IntegerConverter" else
                        "labels.zarr/0.0.0" if type(conv).__name__ == "PathConverter" else
                        "html" if name == "fmt" else "zarr" if name == "kind" else "x1")
    return rule.build(values, append_unknown=False)[1]


def test_every_route_but_the_open_list_refuses_without_a_key(app, client):
    """One rule for every route (found by walking the app's url_map, so a new route cannot
    be forgotten): once keys exist, each one except the explicit open list answers 401
    without a key - job pages with a shell that asks for the key and shows nothing of the
    job, every data route (inside /api or not) with JSON - and no route holding
    <job_id> is open."""
    from webapp.auth import OPEN_ENDPOINTS, PAGE_ENDPOINTS

    data_dir = app.config["ML4PALEO_SETTINGS"].data_dir
    job_id = client.post("/api/job/new", json={"name": "Secret Ammonite"}).get_json()["job_id"]
    ann = data_dir / "jobs" / job_id / "annotations"
    (ann / "labels.zarr").mkdir(parents=True)
    (ann / "labels.zarr" / "0.0.0").write_bytes(b"label chunk bytes")
    (ann / "log.jsonl").write_text('{"stroke": 1}\n')
    _, secret = keys.add_key(data_dir, "lab")
    rules = [r for r in app.url_map.iter_rules()]
    assert len(rules) > 60
    endpoints = {r.endpoint for r in rules}
    assert OPEN_ENDPOINTS <= endpoints and PAGE_ENDPOINTS <= endpoints
    checked = 0
    for rule in rules:
        if "job_id" in rule.arguments:
            assert rule.endpoint not in OPEN_ENDPOINTS, rule.rule
        url = _url_for_rule(rule, job_id)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            r = client.open(url, method=method)
            checked += 1
            if rule.endpoint in OPEN_ENDPOINTS:
                assert r.status_code != 401, (method, url)
                continue
            assert r.status_code == 401, (method, url, r.status_code)
            assert b"Ammonite" not in r.data and b"label chunk" not in r.data, url
            if rule.endpoint in PAGE_ENDPOINTS:
                assert r.mimetype == "text/html" and b'data-locked="true"' in r.data, url
            else:
                assert r.is_json and "access key" in r.get_json()["error"], (method, url)
    assert checked > 70
    # the hostile run's finding: annotation chunks and the stroke log, pages with the name
    assert client.get(f"/job/{job_id}/annotations/labels.zarr/0.0.0").status_code == 401
    assert client.get(f"/job/{job_id}/annotations/log.jsonl").status_code == 401
    with_key = {"X-API-Key": secret}
    r = client.get(f"/job/{job_id}/annotations/labels.zarr/0.0.0", headers=with_key)
    assert r.status_code == 200 and r.data == b"label chunk bytes"
    for page in ("", "/viewer", "/3d", "/download"):
        r = client.get(f"/job/{job_id}{page}", headers=with_key)
        assert r.status_code == 200 and b"Secret Ammonite" in r.data, page
    # the browser's way: the key cookie from POST /api/auth opens the pages too
    assert client.post("/api/auth", json={"key": secret}).status_code == 200
    assert b"Secret Ammonite" in client.get(f"/job/{job_id}").data
    # unknown routes stay plain 404s (nothing of a job is answered)
    assert client.get("/job-nope").status_code == 404
