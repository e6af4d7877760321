"""The Django example served by pmx, through WSGI (a2wsgi) and through ASGI."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from tests.conftest import get


def post_note(port: int, text: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = urllib.parse.urlencode({"text": text})
        conn.request("POST", "/notes", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "target",
    ["examples.django_app.mysite.wsgi:application", "examples.django_app.mysite.asgi:application"],
)
def test_django_serves_and_writes_through_the_orm(pmx_run, tmp_path, target):
    run = pmx_run(target, "-i", "2", env={"DJANGO_DB_PATH": str(tmp_path / "db.sqlite3")})
    run.wait_serving(2)
    pids = set()
    for i in range(6):
        status, note = post_note(run.port, f"note {i}")
        assert status == 201, note
        assert note["text"] == f"note {i}"
        pids.add(note["pid"])
    assert pids == run.worker_pids()  # both workers wrote
    status, body = get(run.port, "/notes")
    assert status == 200
    listing = json.loads(body)
    assert listing["count"] == 6
    assert [n["text"] for n in listing["notes"]] == [f"note {i}" for i in range(6)]
    expected = "wsgi" if "wsgi" in target else "asgi"
    assert get(run.port, "/health") == (200, '{"status": "ok"}')
    if expected == "asgi":
        assert "ASGI 'lifespan' protocol appears unsupported." in run.log()
