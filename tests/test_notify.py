"""Notifications: webhook and SMTP against local receivers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml4paleo import notify
from ml4paleo.config import Settings

RECORD = {
    "id": "job-abc123",
    "name": "Skull 42",
    "status": "meshed",
    "error": None,
    "message": "done",
    "segmentation_id": "seg1",
}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(notify, "TIMEOUT_SECONDS", 5.0)


class _Receiver:
    """HTTP receiver that answers 500 to the first ``fail_first`` POSTs, then 200."""

    def __init__(self, fail_first: int = 0):
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[_Receiver] = []

    def make(fail_first=0):
        r = _Receiver(fail_first)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
            self.messages.append(envelope)
            return "250 OK"

    handler = Handler()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_payload_fields():
    payload = notify.build_payload(Settings(port=8123), RECORD, "meshed")
    assert payload["job_id"] == "job-abc123"
    assert payload["name"] == "Skull 42"
    assert payload["status"] == "meshed"
    assert payload["event"] == "meshed"
    assert payload["links"]["status"] == "http://127.0.0.1:8123/api/job/job-abc123/status"
    assert payload["links"]["report"].endswith("/segmentation/seg1/report.html")


def test_no_channel_is_a_no_op():
    before = threading.active_count()
    notify.notify_job_event(Settings(), RECORD, "meshed")
    assert threading.active_count() == before


def test_webhook_delivered(receiver):
    r = receiver()
    notify.notify_job_event(Settings(webhook_url=r.url), RECORD, "meshed")
    assert notify.wait_for_pending(10)
    assert r.attempts == 1
    assert r.bodies[0]["job_id"] == "job-abc123"
    assert r.bodies[0]["event"] == "meshed"
    assert r.bodies[0]["links"]["job"].endswith("/job/job-abc123")


def test_webhook_retried_until_success(receiver):
    r = receiver(fail_first=2)
    record = dict(RECORD, status="segment_error", error="out of memory")
    notify.notify_job_event(Settings(webhook_url=r.url), record, "segment_error")
    assert notify.wait_for_pending(10)
    assert r.attempts == 3
    assert len(r.bodies) == 1
    assert r.bodies[0]["error"] == "out of memory"
    assert r.bodies[0]["status"] == "segment_error"


def test_webhook_gives_up_quietly(receiver, caplog):
    r = receiver(fail_first=99)
    notify.notify_job_event(Settings(webhook_url=r.url), RECORD, "meshed")
    assert notify.wait_for_pending(10)
    assert r.attempts == notify.ATTEMPTS
    assert r.bodies == []
    assert "failed after 3 attempts" in caplog.text


def test_does_not_block_caller(monkeypatch):
    # a receiver that never answers: the call must still return at once
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    monkeypatch.setattr(notify, "TIMEOUT_SECONDS", 0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow"
    t0 = time.monotonic()
    notify.notify_job_event(Settings(webhook_url=url), RECORD, "meshed")
    assert time.monotonic() - t0 < 0.2
    notify.wait_for_pending(10)
    listener.close()


def test_unreachable_and_bad_record_never_raise():
    port = _free_port()  # nothing listens here
    notify.notify_job_event(Settings(webhook_url=f"http://127.0.0.1:{port}/x"), RECORD, "meshed")
    notify.notify_job_event(Settings(webhook_url="http://127.0.0.1:1/x"), None, "meshed")  # type: ignore[arg-type]
    assert notify.wait_for_pending(10)


def test_email_delivered(smtp_server):
    handler, port = smtp_server
    settings = Settings(
        smtp_host="127.0.0.1", smtp_port=port, smtp_from="lab@example.org", smtp_to="me@example.org"
    )
    record = dict(RECORD, status="convert_error", error="upload/scan.tif: not a TIFF file")
    notify.notify_job_event(settings, record, "convert_error")
    assert notify.wait_for_pending(10)
    assert len(handler.messages) == 1
    envelope = handler.messages[0]
    assert envelope.mail_from == "lab@example.org"
    assert envelope.rcpt_tos == ["me@example.org"]
    msg = message_from_bytes(envelope.content)
    assert msg["Subject"] == "[ml4paleo] job Skull 42: convert_error"
    body = msg.get_payload()
    assert "not a TIFF file" in body
    assert "/api/job/job-abc123/status" in body


def test_email_and_webhook_together(smtp_server, receiver):
    handler, port = smtp_server
    r = receiver(fail_first=1)
    settings = Settings(
        webhook_url=r.url, smtp_host="127.0.0.1", smtp_port=port, smtp_to="me@example.org"
    )
    notify.notify_job_event(settings, RECORD, "meshed")
    assert notify.wait_for_pending(10)
    assert len(handler.messages) == 1
    assert r.attempts == 2 and len(r.bodies) == 1
