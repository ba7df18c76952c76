#!/usr/bin/env python3
"""Prints an HS256 JWT for local development: dev_jwt.py ROLE [SECRET] [TTL_SECONDS] [SUB]."""
import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict, secret: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def main() -> None:
    role = sys.argv[1]
    secret = sys.argv[2] if len(sys.argv) > 2 else "super-secret-jwt-token-with-at-least-32-characters-long"
    ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 365 * 24 * 3600
    now = int(time.time())
    claims = {"iss": "realtime-dev", "role": role, "iat": now, "exp": now + ttl}
    if len(sys.argv) > 4:
        claims["sub"] = sys.argv[4]
    print(sign(claims, secret))


if __name__ == "__main__":
    main()
