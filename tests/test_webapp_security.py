"""Access keys (library, CLI, HTTP) and CSRF protection of the web app."""

from __future__ import annotations

import io
import json

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


def test_key_library_stores_only_salted_hashes(tmp_path):
    info, secret = keys.add_key(tmp_path, "alice")
    info2, secret2 = keys.add_key(tmp_path, "bob")
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text and secret2 not in text
    stored = json.loads(text)["keys"]
    assert stored[0]["salt"] != stored[1]["salt"] and len(stored[0]["hash"]) == 64
    assert keys.verify_key(tmp_path, secret)["name"] == "alice"
    assert keys.verify_key(tmp_path, secret2)["name"] == "bob"
    assert keys.verify_key(tmp_path, secret[:-1] + "x") is None
    assert keys.verify_key(tmp_path, "") is None and keys.verify_key(tmp_path, None) is None
    with pytest.raises(ValueError, match="already exists"):
        keys.add_key(tmp_path, "alice")
    with pytest.raises(ValueError, match="key name"):
        keys.add_key(tmp_path, "../evil")
    assert [k["name"] for k in keys.list_keys(tmp_path)] == ["alice", "bob"]
    assert keys.revoke_key(tmp_path, "alice") and not keys.revoke_key(tmp_path, "alice")
    assert keys.verify_key(tmp_path, secret) is None


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
