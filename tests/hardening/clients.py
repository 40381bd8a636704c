"""The hardening suite's second, independent HTTP client: httpx (with h2/h11).

Run by tests/hardening/refusals.rs as `python3 tests/hardening/clients.py`,
with a JSON job on standard input:

    {"protocol": "h1" | "h2",          # h2: HTTP/2 only (ALPN on TLS)
     "cacert": "/path/ca.pem" | null,  # trust root for https:// URLs
     "concurrency": 8,                 # requests in flight at once
     "client_per_request": false,      # a fresh connection per request,
                                       # closed right after it (so a client
                                       # that gives up really goes away)
     "sync": false,                    # httpx.Client (blocking sockets),
                                       # one request after the other,
                                       # instead of httpx.AsyncClient
     "requests": [
        {"id": "r1", "method": "POST", "url": "https://127.0.0.1:P/x",
         "headers": {"content-type": "application/json"},
         "body_file": "/path" | null,   # the body, read into memory
         "generate": {"total": N, "piece": M} | null,  # a streamed body
                                        # of N bytes in M-byte pieces
                                        # (chunked on HTTP/1.1)
         "local_address": "127.0.0.2" | null,  # source address to bind
         "timeout": 30.0}]}             # seconds

It prints one line per request, in completion order:

    <id> <status> <error.code> <transport error>

status is 0 and error.code `-` when no response was read; transport error
is `-` when there was none, else the exception's class and message with
whitespace replaced by `_`. Exit status 0 once every request has a line;
3 when httpx or its HTTP/2 support is missing (scripts/test.sh installs
them: python3 -m pip install 'httpx[http2]').

Why `sync`: a client that sends its whole body before it reads (httpx
does) and whose write fails because the server closed after answering can
still read that answer from its socket, unless its transport throws the
socket away on the write error, as asyncio's does (the async client then
reports ReadError). The blocking client reads it.
"""

import asyncio
import json
import ssl
import sys

try:
    import h2  # noqa: F401  (httpx's HTTP/2 support)
    import httpx
except ImportError as e:  # loud, never a skip
    print(f"clients.py: {e}: install with python3 -m pip install 'httpx[http2]'", file=sys.stderr)
    sys.exit(3)


def one_line(text):
    return "_".join(str(text).split()) or "-"


def transport(job, local_address, sync=False):
    verify = ssl.create_default_context(cafile=job["cacert"]) if job.get("cacert") else False
    h2_only = job["protocol"] == "h2"
    kind = httpx.HTTPTransport if sync else httpx.AsyncHTTPTransport
    return kind(
        verify=verify,
        http1=not h2_only,
        http2=h2_only,
        local_address=local_address,
        retries=0,
    )


def pieces(total, piece):
    chunk = b"x" * piece
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        sent += n
        yield chunk if n == piece else chunk[:n]


async def apieces(total, piece):
    for p in pieces(total, piece):
        yield p


def content_of(req, sync):
    if req.get("body_file"):
        with open(req["body_file"], "rb") as f:
            return f.read()
    if req.get("generate"):
        g = req["generate"]
        return (pieces if sync else apieces)(g["total"], g["piece"])
    return None


def line(req, r=None, error=None):
    if error is not None:  # every failure is a transport error to report
        return f"{req['id']} 0 - {one_line(type(error).__name__ + ':' + str(error))}"
    code = "-"
    try:
        code = r.json()["error"]["code"]
    except Exception:
        pass
    return f"{req['id']} {r.status_code} {one_line(code)} -"


def request_args(req, sync):
    return dict(
        method=req.get("method", "POST"),
        url=req["url"],
        headers=req.get("headers") or {},
        content=content_of(req, sync),
        timeout=req.get("timeout", 30.0),
    )


async def send(client, req):
    try:
        r = await client.request(**request_args(req, False))
    except Exception as e:
        return line(req, error=e)
    return line(req, r)


def run_sync(job):
    for req in job["requests"]:
        with httpx.Client(transport=transport(job, req.get("local_address"), sync=True)) as c:
            try:
                r = c.request(**request_args(req, True))
                print(line(req, r), flush=True)
            except Exception as e:
                print(line(req, error=e), flush=True)


async def main(job):
    limit = asyncio.Semaphore(job.get("concurrency", 8))
    shared = {}

    def client_for(addr):
        if addr not in shared:
            shared[addr] = httpx.AsyncClient(transport=transport(job, addr))
        return shared[addr]

    async def run(req):
        async with limit:
            addr = req.get("local_address")
            if job.get("client_per_request"):
                async with httpx.AsyncClient(transport=transport(job, addr)) as c:
                    line = await send(c, req)
            else:
                line = await send(client_for(addr), req)
            print(line, flush=True)

    try:
        await asyncio.gather(*(run(r) for r in job["requests"]))
    finally:
        for c in shared.values():
            await c.aclose()


job = json.load(sys.stdin)
if job.get("sync"):
    run_sync(job)
else:
    asyncio.run(main(job))
