"""Shared helpers: JWTs signed with the development secret, psql, the server URL."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid

import pytest

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
PG_PORT = os.environ.get("PG_PORT", "54399")
WS_PORT = os.environ.get("WS_PORT", "4099")
# supabase-py hands the client <project>/realtime/v1; the client adds /websocket.
# REALTIME_URL: https://… when the cluster serves TLS (pg_test/tls/run.sh).
URL = os.environ.get("REALTIME_URL", f"http://127.0.0.1:{WS_PORT}") + "/realtime/v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(role: str = "anon", ttl: int = 3600, **claims) -> str:
    now = int(time.time())
    body = {"role": role, "iat": now, "exp": now + ttl, **claims}
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(body).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(sig)}"


def psql(sql: str) -> str:
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PG_PORT,
         "-U", "postgres", "-d", "postgres", "-c", sql],
        capture_output=True, text=True, check=True)
    return out.stdout.strip()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def policies():
    psql("""
        DROP POLICY IF EXISTS py_read ON realtime.messages;
        CREATE POLICY py_read ON realtime.messages FOR SELECT TO authenticated
          USING (realtime.topic() LIKE 'py-private:%');
    """)
