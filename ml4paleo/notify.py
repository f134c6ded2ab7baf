"""Job notifications: an optional webhook POST and/or an e-mail when a job finishes or fails.

Both channels are configured in :class:`ml4paleo.config.Settings` (``webhook_url``,
``smtp_host`` / ``smtp_port`` / ``smtp_from`` / ``smtp_to`` / ``smtp_user`` /
``smtp_password`` / ``smtp_starttls``). Delivery runs in a background daemon thread,
retried with exponential backoff, so a slow or unreachable receiver never blocks a runner;
:func:`notify_job_event` never raises.
"""

from __future__ import annotations

import json
import logging
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage

from ml4paleo.config import Settings

log = logging.getLogger(__name__)

#: delivery attempts per channel
ATTEMPTS = 3
#: seconds before the 2nd attempt; doubles for each further attempt
BACKOFF_SECONDS = 1.0
#: network timeout per attempt, seconds
TIMEOUT_SECONDS = 10.0

_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()


def build_payload(settings: Settings, record: dict, event: str) -> dict:
    """The JSON body sent to the webhook (and summarised in the e-mail).

    Parameters
    ----------
    settings : Settings
        Used for the server address in the links.
    record : dict
        The job record (``ml4paleo.jobs`` keys: id, name, status, error, ...).
    event : str
        What happened, e.g. ``"converted"``, ``"meshed"``, ``"segment_error"``.

    Returns
    -------
    dict
        ``{"job_id", "name", "status", "event", "error", "message", "updated_at", "links"}``.

    Examples
    --------
    >>> p = build_payload(Settings(), {"id": "abc", "name": "skull", "status": "meshed"}, "meshed")
    >>> p["links"]["status"]
    'http://127.0.0.1:5000/api/job/abc/status'
    """
    job_id = str(record.get("id", ""))
    base = _base_url(settings)
    links = {
        "job": f"{base}/job/{job_id}",
        "status": f"{base}/api/job/{job_id}/status",
    }
    seg_id = record.get("segmentation_id")
    if seg_id:
        links["report"] = f"{base}/api/job/{job_id}/segmentation/{seg_id}/report.html"
    return {
        "job_id": job_id,
        "name": record.get("name"),
        "status": _text(record.get("status")),
        "event": event,
        "error": record.get("error"),
        "message": record.get("message"),
        "updated_at": record.get("updated_at"),
        "links": links,
    }


def notify_job_event(settings: Settings, record: dict, event: str) -> None:
    """Send the configured notifications for a job event, in the background.

    Does nothing when neither ``settings.webhook_url`` nor ``settings.smtp_host`` (with
    ``smtp_to``) is set. Each channel is tried :data:`ATTEMPTS` times with exponential
    backoff in a daemon thread; failures are logged, never raised.

    Parameters
    ----------
    settings : Settings
        Notification configuration.
    record : dict
        The job record after the event.
    event : str
        The event name (typically the new status, e.g. ``"meshed"`` or ``"convert_error"``).

    Examples
    --------
    >>> notify_job_event(Settings(), {"id": "abc", "status": "meshed"}, "meshed")  # no channel
    """
    try:
        senders = _senders(settings)
        if not senders:
            return
        payload = build_payload(settings, record, event)
        for channel, send in senders:
            thread = threading.Thread(
                target=_deliver,
                args=(channel, send, payload),
                name=f"ml4paleo-notify-{channel}",
                daemon=True,
            )
            with _threads_lock:
                _threads[:] = [t for t in _threads if t.is_alive()]
                _threads.append(thread)
            thread.start()
    except Exception:  # noqa: BLE001 - a notification must never break a runner
        log.exception("could not start notification (%s)", event)


def wait_for_pending(timeout: float | None = None) -> bool:
    """Block until the background deliveries started so far are done (tests, short scripts).

    Returns
    -------
    bool
        True when every delivery thread finished within ``timeout``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with _threads_lock:
        pending = list(_threads)
    for thread in pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        thread.join(remaining)
    return not any(t.is_alive() for t in pending)


def send_webhook(url: str, payload: dict, timeout: float | None = None) -> None:
    """POST ``payload`` as JSON to ``url``; raise on a network error or a non-2xx answer."""
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    body = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "ml4paleo-notify"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise OSError(f"webhook {url} answered HTTP {response.status}")


def send_email(settings: Settings, payload: dict, timeout: float | None = None) -> None:
    """Send a plain-text e-mail about ``payload`` through the configured SMTP server."""
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    message = EmailMessage()
    name = payload.get("name") or payload["job_id"]
    message["Subject"] = f"[ml4paleo] job {name}: {payload['event']}"
    message["From"] = settings.smtp_from or f"ml4paleo@{settings.smtp_host}"
    message["To"] = settings.smtp_to
    lines = [
        f"Job:    {name} ({payload['job_id']})",
        f"Event:  {payload['event']}",
        f"Status: {payload['status']}",
    ]
    if payload.get("error"):
        lines.append(f"Error:  {payload['error']}")
    if payload.get("message"):
        lines.append(f"Note:   {payload['message']}")
    lines.append("")
    lines += [f"{key}: {url}" for key, url in payload["links"].items()]
    message.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(message)


def _senders(settings: Settings) -> list[tuple[str, Callable[[dict], None]]]:
    senders: list[tuple[str, Callable[[dict], None]]] = []
    if settings.webhook_url:
        url = settings.webhook_url
        senders.append(("webhook", lambda payload: send_webhook(url, payload)))
    if settings.smtp_host and settings.smtp_to:
        senders.append(("email", lambda payload: send_email(settings, payload)))
    elif settings.smtp_host:
        log.warning("smtp_host is set but smtp_to is empty: no e-mail notifications")
    return senders


def _deliver(channel: str, send: Callable[[dict], None], payload: dict) -> None:
    delay = BACKOFF_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            send(payload)
            log.info("notified %s for job %s (%s)", channel, payload["job_id"], payload["event"])
            return
        except Exception as exc:  # noqa: BLE001 - logged, retried, never raised
            if attempt == ATTEMPTS:
                log.warning(
                    "%s notification for job %s failed after %d attempts: %s",
                    channel, payload["job_id"], ATTEMPTS, exc,
                )
                return
            log.info("%s notification attempt %d failed (%s); retrying", channel, attempt, exc)
            time.sleep(delay)
            delay *= 2


def _base_url(settings: Settings) -> str:
    configured = (settings.extra or {}).get("public_url")
    if configured:
        return str(configured).rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.port}"


def _text(value) -> str | None:
    if value is None:
        return None
    return getattr(value, "value", str(value))
