"""Hostile HTTP/1.1 traffic against an OpenAI-compatible server, as a library of named attacks.

Used by tests/e2e/test_serve_hardening.py (asserts the hardened `peregrine serve` behaves as its
spec says) and bench/attacks.py (the same attacks against peregrine and llama-server, side by side).
Only the standard library: malformed traffic goes through raw sockets, never an HTTP client that
would fix it up.

An Attack is a name, a group, run(host, port, opts) -> Outcome (what came back: responses in order,
whether the server closed the connection, timings, measurements) and check(outcome, opts) -> None
when the server did what the spec asks, else one line saying what it did instead. `run_attack`
wraps one attack with the probes a test wants around it: GET /health latency and a normal
temperature-0 completion on another connection, during the attack (for attacks that hold
connections open) and after it, compared with the same completion obtained before.

The spec the checks encode (the hardened server; llama-server and the old cpp-httplib server fail
many of them):
  - head (request line + fields) over 16 KiB, or over 100 fields: 431 and close;
  - body over --max-body, whatever the framing: 413 and close, nothing buffered beyond the limit;
  - Content-Encoding other than identity: 415 and close, nothing decompressed;
  - RFC 9112 framing: bad or conflicting Content-Length, Transfer-Encoding with Content-Length,
    malformed request line, bare LF, space before colon, bad chunk size: 400 and close; a
    Transfer-Encoding other than "chunked": 501 (400 when chunked is not last) and close;
  - any response sent before a declared body was read closes the connection (no smuggling);
  - `Authorization: Bearer` with the scheme in any case; 100-continue; pipelining; HTTP/1.0
    without chunked encoding;
  - slow or silent clients are closed after --read-timeout (from a request's first byte) or
    --idle-timeout, and do not starve others; over --max-connections, new connections are refused;
  - a client that goes away mid-request has its generation cancelled, gzip or not, stream or not.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import json
import os
import re
import select
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

# The normal client's request: short, greedy, so its answer is a fixed string per server and model.
REFERENCE_PROMPT = "The capital of France is"
REFERENCE_MAX_TOKENS = 6
HEALTH_BOUND_S = 1.0  # what the tests allow /health during an attack (the target is 0.1 s)


@dataclass
class Opts:
    """What an attack needs to know about the server under attack."""
    api_key: str | None = None  # a valid key, sent by every request meant to be valid
    model: str = "smollm2-135m"
    max_body: int = 65536  # the server's --max-body
    ctx: int = 512  # context per sequence (-c)
    max_n: int = 2  # largest n the server takes (peregrine: --parallel)
    read_timeout: float = 2.0  # --read-timeout
    idle_timeout: float = 3.0  # --idle-timeout
    max_connections: int | None = None  # --max-connections, when the attack should test it
    slow_connections: int = 300  # slowloris connections
    io_timeout: float = 10.0  # longest wait for any one answer
    server_pid: int | None = None  # for RSS samples (/proc/PID/status), when local
    model_path: str | None = None  # the -m value, which no response may reveal
    reference: str | None = None  # the normal client's answer before the attack
    # Server load, for the disconnect attacks: sequences being generated, and tokens generated so far.
    busy: Callable[[], float] | None = None
    generated: Callable[[], float] | None = None
    ready: Callable[[], None] | None = None  # attacks that hold connections call this once they do

    def auth(self) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {self.api_key}")] if self.api_key else []


# ---- wire format ---------------------------------------------------------------------------------

def request(method: str, path: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
            version: str = "HTTP/1.1", content_length: bool = True) -> bytes:
    """One request as bytes, CRLF line endings, Host first; Content-Length added for a body
    unless CONTENT_LENGTH is False or the headers already frame it."""
    hs = list(headers)
    names = {k.lower() for k, _ in hs}
    if "host" not in names:
        hs.insert(0, ("Host", "127.0.0.1"))
    if body and content_length and not names & {"content-length", "transfer-encoding"}:
        hs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + body


def chunked(body: bytes, size: int) -> bytes:
    """BODY in chunks of SIZE bytes, then the last chunk."""
    out = bytearray()
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def sse_data(resp: Iterable[bytes]) -> Iterator[str]:
    """The data of each server-sent event of a response read line by line (JSON text, or "[DONE]")."""
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if line.startswith("data:"):
            yield line[5:].strip()


def completion_body(opts: Opts, prompt: str = REFERENCE_PROMPT, max_tokens: int = REFERENCE_MAX_TOKENS,
                    **extra) -> bytes:
    return json.dumps({"model": opts.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       **extra}).encode()


def completion(opts: Opts, version: str = "HTTP/1.1", headers: Iterable[tuple[str, str]] = (), **kw) -> bytes:
    """A valid POST /v1/completions (the reference prompt unless KW says otherwise)."""
    return request("POST", "/v1/completions", [*opts.auth(), ("Content-Type", "application/json"), *headers],
                   completion_body(opts, **kw), version=version)


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def json(self):
        return json.loads(self.body)

    def text(self) -> str:
        """The first choice's text of a completion response, or None."""
        try:
            return self.json()["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


class Closed(Exception):
    """The server closed (or reset) the connection."""


class Conn:
    """A raw client connection with a read buffer; responses parsed by hand."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False

    def send(self, data: bytes) -> bool:
        """False when the server no longer takes data (closed or reset)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline: float) -> None:
        """Read more into the buffer; Closed at EOF or reset, TimeoutError at the deadline."""
        if self.eof:
            raise Closed()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError() from None
        except OSError:  # ECONNRESET
            self.eof = True
            raise Closed() from None
        if not data:
            self.eof = True
            raise Closed()
        self.buf += data

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i]).rstrip(b"\r")
        del self.buf[:i + 1]
        return line

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, timeout: float, head_request: bool = False) -> Response:
        """The next response (interim 1xx ones too). Closed when the server closed before a whole
        response (the partial bytes stay in self.buf), TimeoutError when it said nothing in time."""
        deadline = time.monotonic() + timeout
        status_line = self._line(deadline).decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not a status line: {status_line[:80]!r}")
        headers = []
        while True:
            line = self._line(deadline).decode("latin-1")
            if not line:
                break
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        r = Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers)
        if r.status < 200 or r.status in (204, 304) or head_request:
            return r
        te, cl = r.header("Transfer-Encoding"), r.header("Content-Length")
        if te and te.lower().endswith("chunked"):
            body = bytearray()
            while True:
                size = int(self._line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self._line(deadline):  # trailers
                        pass
                    break
                body += self._exact(size, deadline)
                self._line(deadline)
            r.body = bytes(body)
        elif cl is not None:
            r.body = self._exact(int(cl.split(",")[0]), deadline)
        else:  # delimited by the connection's close
            try:
                while True:
                    self._fill(deadline)
            except Closed:
                pass
            r.body, self.buf = bytes(self.buf), bytearray()
        return r

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closes within TIMEOUT (whatever it sends meanwhile stays in buf)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---- outcomes and checks ---------------------------------------------------------------------------

@dataclass
class Outcome:
    responses: list[Response] = field(default_factory=list)  # in order, 1xx included
    closed: bool | None = None  # the server closed the connection (None: not looked at)
    seconds: float = 0.0  # from the first byte sent to the last thing observed
    error: str | None = None  # what the client saw go wrong (silence, garbage)
    notes: dict = field(default_factory=dict)  # per-attack measurements

    @property
    def final(self) -> list[Response]:
        return [r for r in self.responses if r.status >= 200]

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def summary(self) -> str:
        parts = [" ".join(map(str, self.statuses)) or "no response"]
        if self.closed is not None:
            parts.append("closed" if self.closed else "kept open")
        if self.error:
            parts.append(self.error)
        parts += [f"{k} {v}" for k, v in self.notes.items()]
        return ", ".join(parts)


Check = Callable[[Outcome, Opts], "str | None"]


def wants(*statuses: int, close: bool = True) -> Check:
    """Exactly one final response, with one of STATUSES; then the server closes (when CLOSE)."""

    def check(o: Outcome, opts: Opts) -> str | None:
        if not o.final:
            return f"no final response ({o.summary()})"
        if o.final[0].status not in statuses:
            return f"status {o.final[0].status}, wanted {'/'.join(map(str, statuses))} ({o.summary()})"
        if len(o.final) > 1:
            return f"{len(o.final)} responses to one request: {o.statuses} (the body was read as a request)"
        if close and not o.closed:
            return f"status {o.final[0].status} but the connection was kept open"
        return None

    return check


def all_of(*checks: Check) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        for c in checks:
            why = c(o, opts)
            if why:
                return why
        return None
    return check


def error_code(code: str) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        got = o.final[0].error_code() if o.final else None
        return None if got == code else f"error code {got!r}, wanted {code!r}"
    return check


def mentions(what: Callable[[Opts], str]) -> Check:
    """The error message names WHAT (a number: as a whole word, not inside another number)."""
    def check(o: Outcome, opts: Opts) -> str | None:
        word = what(opts)
        try:
            message = o.final[0].json()["error"]["message"]
        except (IndexError, ValueError, KeyError, TypeError):
            return f"no error message: {o.summary()}"
        return None if re.search(rf"(?<![\w.]){re.escape(word)}(?!\w|\.\d)", message) else \
            f"the error does not name {word!r}: {message[:200]!r}"
    return check


def answers_reference(o: Outcome, opts: Opts) -> str | None:
    """Every completion among the responses answers the reference text."""
    for r in o.final:
        t = r.text()
        if t is not None and opts.reference is not None and t != opts.reference:
            return f"completion {t!r}, wanted {opts.reference!r}"
    return None


# ---- running requests ---------------------------------------------------------------------------

def exchange(host: str, port: int, payload: bytes | Iterable[bytes], opts: Opts, responses: int = 1,
             linger: float = 1.0) -> Outcome:
    """Send PAYLOAD on one connection and read what comes back: up to RESPONSES final responses,
    then up to LINGER seconds more for the server's close, parsing anything else it sends as
    further responses (an answered smuggled request shows up there).

    The payload is sent from a second thread, so a server that answers before reading all of it
    (413, 401 with a big body) is heard; an iterable is sent piece by piece until the server
    stops taking data."""
    o = Outcome()
    t0 = time.monotonic()
    try:
        c = Conn(host, port, opts.io_timeout)
    except OSError as e:
        o.error, o.closed = f"connect: {e}", True
        return o
    sent = [0]  # bytes the server took
    stop = threading.Event()

    def sender():
        for piece in ([payload] if isinstance(payload, (bytes, bytearray)) else payload):
            if stop.is_set() or not c.send(piece):
                return
            sent[0] += len(piece)
        if opts.ready:
            opts.ready()  # all sent: what an attack that holds the server waits on now is the answer

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        while len(o.final) < responses:
            o.responses.append(c.read_response(opts.io_timeout))
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline:  # anything more is a response we did not ask for
            o.responses.append(c.read_response(max(0.01, deadline - time.monotonic())))
        o.closed = False
    except Closed:
        o.closed = True
        if c.buf.strip():
            o.error = f"closed mid-response: {bytes(c.buf[:80])!r}"
    except TimeoutError:
        if len(o.final) < responses:
            o.error = f"no answer within {opts.io_timeout:g} s"
        o.closed = False
    except ValueError as e:
        o.error = str(e)
    finally:
        o.seconds = time.monotonic() - t0
        stop.set()
        c.close()
        t.join(5)
    o.notes["sent"] = _size(sent[0])
    return o


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class RssPeak:
    """Samples a process's RSS every 10 ms while in a with-block; .growth_kib is peak minus start."""

    def __init__(self, pid: int | None):
        self.pid, self.start, self.peak = pid, None, None
        self._stop = threading.Event()

    def __enter__(self):
        if self.pid is not None:
            self.start = self.peak = rss_kib(self.pid)
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            v = rss_kib(self.pid)
            if v is not None and self.peak is not None:
                self.peak = max(self.peak, v)

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid is not None:
            self._t.join()

    @property
    def growth_kib(self) -> int | None:
        return None if self.start is None or self.peak is None else self.peak - self.start


def rss_within(extra_kib: Callable[[Opts], int]) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        g = o.notes.get("rss_growth_kib")
        if g is None:
            return None  # not measured (remote server)
        limit = extra_kib(opts)
        return None if g <= limit else f"RSS grew {g} KiB during the attack (allowed {limit} KiB)"
    return check


# ---- attacks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attack:
    name: str
    group: str
    run: Callable[[str, int, Opts], Outcome]
    check: Check
    holds: bool = False  # keeps connections open a while: probe the server during it
    needs: tuple[str, ...] = ()  # Opts fields that must be set: "api_key", "busy", "max_connections", ...
    about: str = ""


def simple(name: str, group: str, make: Callable[[Opts], bytes | Iterable[bytes]], check: Check,
           responses: int = 1, linger: float = 1.0, needs: tuple[str, ...] = (), about: str = "",
           measure_rss: bool = False, holds: bool = False) -> Attack:
    def run(host: str, port: int, opts: Opts) -> Outcome:
        with RssPeak(opts.server_pid if measure_rss else None) as rss:
            o = exchange(host, port, make(opts), opts, responses=responses, linger=linger)
        if rss.growth_kib is not None:
            o.notes["rss_growth_kib"] = rss.growth_kib
        return o
    return Attack(name, group, run, check, holds=holds, needs=needs, about=about)


def with_head(opts: Opts, headers: list[tuple[str, str]], method: str = "GET", path: str = "/v1/models",
              body: bytes = b"") -> bytes:
    return request(method, path, [*opts.auth(), *headers], body)


def _smuggled(opts: Opts) -> bytes:
    """A complete, valid request to hide in a body: answered only if the body is read as requests."""
    return request("GET", "/v1/models", opts.auth())


def _smuggled_post(opts: Opts) -> bytes:
    return completion(opts, max_tokens=1)


def _post(opts: Opts, path: str, body: bytes, headers: Iterable[tuple[str, str]] = (),
          auth: bool = True) -> bytes:
    return request("POST", path, [*(opts.auth() if auth else []), ("Content-Type", "application/json"),
                                  *headers], body)


def _chunks_of(total: int, size: int, prefix: bytes = b"") -> Iterator[bytes]:
    """A chunked body of TOTAL bytes of JSON-ish filler, one chunk of SIZE per piece, no last chunk."""
    if prefix:
        yield prefix
    piece = b"%x\r\n" % size + b" " * size + b"\r\n"
    for _ in range(total // size):
        yield piece


def _chunked_head(opts: Opts) -> bytes:
    return request("POST", "/v1/completions", [*opts.auth(), ("Content-Type", "application/json"),
                                                ("Transfer-Encoding", "chunked")])


@functools.lru_cache(maxsize=4)
def _gzip_bomb_body(model: str, max_body: int) -> bytes:
    """A valid completion request padded in front by whitespace, gzipped: deflate packs a run of
    spaces ~1000:1, so the compressed body stays under --max-body while it unpacks to ~800 times
    that (at most 256 MiB, to keep the client quick)."""
    raw_size = min(max_body * 800, 256 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    out = bytearray()
    block = b" " * (1 << 20)
    for _ in range(raw_size >> 20):
        out += z.compress(block)
    out += z.compress(completion_body(Opts(model=model), max_tokens=1)) + z.flush()
    return bytes(out)


def _gzip_bomb(opts: Opts) -> bytes:
    return _post(opts, "/v1/completions", _gzip_bomb_body(opts.model, opts.max_body),
                 [("Content-Encoding", "gzip")])


def _encoded(coding: str) -> Callable[[Opts], bytes]:
    def make(opts: Opts) -> bytes:
        body = completion_body(opts, max_tokens=1)
        if coding == "gzip":
            body = gzip.compress(body)
        elif coding == "deflate":
            body = zlib.compress(body)
        # br and others: the bytes as they are (the server must refuse before decoding anything)
        return _post(opts, "/v1/completions", body, [("Content-Encoding", coding)])
    return make


def _cl(*values: str, body: bytes = b"hello") -> Callable[[Opts], bytes]:
    def make(opts: Opts) -> bytes:
        return request("POST", "/v1/completions", [*opts.auth(), *(("Content-Length", v) for v in values)], body)
    return make


def _te(value: str) -> Callable[[Opts], bytes]:
    def make(opts: Opts) -> bytes:
        return request("POST", "/v1/completions", [*opts.auth(), ("Content-Type", "application/json"),
                                                    ("Transfer-Encoding", value)],
                       chunked(completion_body(opts, max_tokens=1), 16) + _smuggled(opts))
    return make


def _bad_chunk(size_line: bytes) -> Callable[[Opts], bytes]:
    def make(opts: Opts) -> bytes:
        return _chunked_head(opts) + size_line + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"
    return make


def _identical_cl(opts: Opts) -> bytes:
    body = completion_body(opts)
    return request("POST", "/v1/completions", [*opts.auth(), ("Content-Type", "application/json"),
                                                ("Content-Length", str(len(body))),
                                                ("Content-Length", str(len(body)))], body)


def _te_capitalised(opts: Opts) -> bytes:
    return request("POST", "/v1/completions", [*opts.auth(), ("Content-Type", "application/json"),
                                                ("Transfer-Encoding", "Chunked")], chunked(completion_body(opts), 7))


def _many_fields(n_total: int) -> Callable[[Opts], bytes]:
    """A GET /v1/models with N_TOTAL header fields in all (Host and Authorization count)."""
    def make(opts: Opts) -> bytes:
        fixed = 1 + len(opts.auth())
        return with_head(opts, [(f"X-Filler-{i}", "1") for i in range(n_total - fixed)])
    return make


def _big_head(head_bytes: int) -> Callable[[Opts], bytes]:
    """A GET /v1/models whose head (request line and fields, CRLFs included) is HEAD_BYTES long."""
    def make(opts: Opts) -> bytes:
        base = len(with_head(opts, [("X-Pad", "")]))
        return with_head(opts, [("X-Pad", "a" * (head_bytes - base))])
    return make


def _wrong_key_post(opts: Opts, smuggled: bytes) -> bytes:
    return request("POST", "/v1/completions", [("Authorization", "Bearer wrong-key"),
                                                ("Content-Type", "application/json")], smuggled)


def _http10(stream: bool, keep_alive: bool = False) -> Callable[[Opts], bytes]:
    def make(opts: Opts) -> bytes:
        hs = [("Connection", "keep-alive")] if keep_alive else []
        return completion(opts, version="HTTP/1.0", headers=hs, stream=stream)
    return make


def http10_framing(stream: bool, must_close: bool) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        if not o.final or o.final[0].status != 200:
            return f"wanted 200 ({o.summary()})"
        r = o.final[0]
        if (r.header("Transfer-Encoding") or "").lower().find("chunked") >= 0:
            return "chunked response to an HTTP/1.0 request"
        if stream:
            if b"data: [DONE]" not in r.body:
                return f"stream body without data: [DONE]: {r.body[-120:]!r}"
            if r.header("Content-Length") is None and not o.closed:
                return "stream neither has Content-Length nor ends with the connection"
        else:
            cl = r.header("Content-Length")
            if cl is None or int(cl) != len(r.body):
                return f"Content-Length {cl!r} for a {len(r.body)}-byte body"
        if must_close and not o.closed:
            return "HTTP/1.0 connection without keep-alive kept open"
        return answers_reference(o, opts) if not stream else None
    return check


def _expect_continue(good_key: bool) -> Callable[[str, int, Opts], Outcome]:
    """Head with Expect: 100-continue, wait for the interim answer, then send the body."""
    def run(host: str, port: int, opts: Opts) -> Outcome:
        o = Outcome()
        t0 = time.monotonic()
        body = completion_body(opts)
        auth = opts.auth() if good_key else [("Authorization", "Bearer wrong-key")]
        head = request("POST", "/v1/completions", [*auth, ("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))),
                                                   ("Expect", "100-continue")])
        c = Conn(host, port, opts.io_timeout)
        try:
            c.send(head)
            try:
                first = c.read_response(min(3.0, opts.io_timeout))
                o.responses.append(first)
            except TimeoutError:
                first = None
                o.notes["interim"] = "none within 3 s"
            if first is None or first.status == 100:
                c.send(body)
                o.responses.append(c.read_response(opts.io_timeout))
            o.closed = c.wait_closed(1.0)
        except Closed:
            o.closed = True
        except TimeoutError:
            o.error = f"no answer within {opts.io_timeout:g} s"
        finally:
            o.seconds = time.monotonic() - t0
            c.close()
        return o
    return run


def continue_check(good_key: bool) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        if good_key:
            if o.statuses[:1] != [100]:
                return f"no '100 Continue' before the body ({o.summary()})"
            if o.statuses[1:] != [200]:
                return f"final status {o.statuses[1:]}, wanted 200 ({o.summary()})"
            return answers_reference(o, opts)
        if 100 in o.statuses:
            return f"'100 Continue' to a request that will be refused ({o.summary()})"
        return wants(401)(o, opts)
    return check


def _pipeline(*makers: Callable[[Opts], bytes]) -> Callable[[Opts], bytes]:
    return lambda opts: b"".join(m(opts) for m in makers)


def pipeline_check(statuses: list[int]) -> Check:
    def check(o: Outcome, opts: Opts) -> str | None:
        if o.statuses != statuses:
            return f"statuses {o.statuses}, wanted {statuses} ({o.summary()})"
        return answers_reference(o, opts)
    return check


def _health(opts: Opts) -> bytes:
    return request("GET", "/health")


def _models(opts: Opts) -> bytes:
    return request("GET", "/v1/models", opts.auth())


def _completion(opts: Opts) -> bytes:
    return completion(opts)


def models_ok(o: Outcome, opts: Opts) -> str | None:
    try:
        return None if o.final[0].json()["data"] else "empty model list"
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a model list: {o.final[0].body[:120]!r}"


def no_model_path(o: Outcome, opts: Opts) -> str | None:
    if not opts.model_path or not o.final:
        return None
    body = o.final[0].body.decode("utf-8", "replace")
    for secret in {str(Path(opts.model_path).parent), opts.model_path}:
        if secret and secret not in (".", "/") and secret in body:
            return f"the response reveals {secret!r}: {body[:200]!r}"
    return None


# -- slow clients ---------------------------------------------------------------------------------

def _hold_many(n_of: Callable[[Opts], int], opening: Callable[[Opts], bytes],
               wait: Callable[[Opts], float]) -> Callable[[str, int, Opts], Outcome]:
    """Open N connections, send each OPENING (possibly nothing) and stall; report how many the
    server closed within WAIT seconds and when the last of those closed."""
    def run(host: str, port: int, opts: Opts) -> Outcome:
        o = Outcome()
        n = n_of(opts)
        socks: list[socket.socket] = []
        t0 = time.monotonic()
        data = opening(opts)
        try:
            for _ in range(n):
                try:
                    s = socket.create_connection((host, port), timeout=5)
                except OSError as e:
                    o.notes["connect_failed"] = f"after {len(socks)}: {e}"
                    break
                if data:
                    try:
                        s.sendall(data)
                    except OSError:
                        pass
                socks.append(s)
            o.notes["connections"] = len(socks)
            if opts.ready:
                opts.ready()
            open_ = {s.fileno(): s for s in socks}
            last_close = None
            deadline = t0 + wait(opts)
            while open_ and time.monotonic() < deadline:
                r, _, _ = select.select(list(open_.values()), [], [], max(0.0, min(0.2, deadline - time.monotonic())))
                for s in r:
                    try:
                        got = s.recv(4096)
                    except OSError:
                        got = b""
                    if not got:  # EOF or reset: the server let go (any 408 it sent came before)
                        open_.pop(s.fileno(), None)
                        last_close = time.monotonic() - t0
            o.notes["closed_by_server"] = f"{len(socks) - len(open_)}/{len(socks)}"
            o.notes["last_closed_s"] = None if last_close is None else round(last_close, 2)
            o.closed = not open_
        finally:
            for s in socks:
                s.close()
            o.seconds = time.monotonic() - t0
        return o
    return run


def all_closed(o: Outcome, opts: Opts) -> str | None:
    if o.notes.get("connections", 0) == 0:
        return f"could not open the connections ({o.summary()})"
    if not o.closed:
        return f"stalled connections not closed in time: {o.notes['closed_by_server']} closed"
    return None


def _trickle(head: Callable[[Opts], bytes], tail: bytes, every: float) -> Callable[[str, int, Opts], Outcome]:
    """Send HEAD, then TAIL one byte every EVERY seconds, until the server closes or
    read_timeout + 4 s have passed."""
    def run(host: str, port: int, opts: Opts) -> Outcome:
        o = Outcome()
        t0 = time.monotonic()
        c = Conn(host, port, opts.io_timeout)
        try:
            c.send(head(opts))
            if opts.ready:
                opts.ready()
            deadline = t0 + opts.read_timeout + 4
            for b in tail:
                if time.monotonic() > deadline:
                    break
                if not c.send(bytes([b])):
                    break
                if c.wait_closed(every):
                    break
            o.closed = c.eof or c.wait_closed(0.2)
            o.notes["closed_after_s"] = round(time.monotonic() - t0, 2) if o.closed else None
            if c.buf:
                o.notes["answer"] = bytes(c.buf.split(b"\r\n", 1)[0][:40]).decode("latin-1")
        finally:
            c.close()
            o.seconds = time.monotonic() - t0
        return o
    return run


def closed_by_read_timeout(o: Outcome, opts: Opts) -> str | None:
    if not o.closed:
        return f"still open after {o.seconds:.1f} s of trickling (--read-timeout {opts.read_timeout:g})"
    after = o.notes["closed_after_s"]
    # Generous: a server that closes within 2.5 s of its deadline passes; one that waits for the
    # trickle to finish (or its own 30 s) does not.
    if after > opts.read_timeout + 2.5:
        return f"closed after {after} s (--read-timeout {opts.read_timeout:g})"
    return None


def _idle_keepalive(host: str, port: int, opts: Opts) -> Outcome:
    """A completed request on a keep-alive connection, then silence: open at half the idle
    timeout, closed by idle timeout + 2.5 s."""
    o = Outcome()
    t0 = time.monotonic()
    c = Conn(host, port, opts.io_timeout)
    try:
        c.send(_health(opts))
        o.responses.append(c.read_response(opts.io_timeout))
        t1 = time.monotonic()
        early = c.wait_closed(opts.idle_timeout / 2)
        o.notes["open_at_half_idle"] = not early
        o.closed = early or c.wait_closed(opts.idle_timeout / 2 + 2.5)
        o.notes["closed_after_s"] = round(time.monotonic() - t1, 2) if o.closed else None
    except (Closed, TimeoutError) as e:
        o.error = type(e).__name__
    finally:
        c.close()
        o.seconds = time.monotonic() - t0
    return o


def idle_check(o: Outcome, opts: Opts) -> str | None:
    if o.statuses != [200]:
        return f"wanted one 200 ({o.summary()})"
    if not o.notes["open_at_half_idle"]:
        return "an idle keep-alive connection closed before half of --idle-timeout"
    if not o.closed:
        return f"idle keep-alive connection still open {opts.idle_timeout + 2.5:g} s after its response"
    return None


def _over_max_connections(host: str, port: int, opts: Opts) -> Outcome:
    """Hold max_connections keep-alive connections (each served once), open as many again: each
    of those must get a 503 or be closed within 2 s; the held ones still work; once they are
    gone a new connection is served."""
    o = Outcome()
    t0 = time.monotonic()
    n = opts.max_connections or 0
    held: list[Conn] = []
    extra: list[Conn] = []
    try:
        for _ in range(n):
            c = Conn(host, port, opts.io_timeout)
            c.send(_health(opts))
            c.read_response(opts.io_timeout)
            held.append(c)
        if opts.ready:
            opts.ready()
        refused = 0
        for _ in range(n):
            try:
                c = Conn(host, port, 2)
            except OSError:
                refused += 1
                continue
            extra.append(c)
            c.send(_health(opts))
            try:
                r = c.read_response(2.0)
                refused += r.status == 503
            except Closed:
                refused += 1
            except TimeoutError:
                pass  # neither served nor refused: left hanging
        o.notes["refused"] = f"{refused}/{n}"
        still = 0
        for c in held:
            try:
                c.send(_health(opts))
                still += c.read_response(opts.io_timeout).status == 200
            except (Closed, TimeoutError):
                pass
        o.notes["held_still_served"] = f"{still}/{n}"
        for c in held + extra:
            c.close()
        held, extra = [], []
        time.sleep(0.3)
        o.responses.append(exchange(host, port, _health(opts), opts, linger=0).final[0])
    except (Closed, TimeoutError, OSError, IndexError) as e:
        o.error = f"{type(e).__name__} {e}"
    finally:
        for c in held + extra:
            c.close()
        o.seconds = time.monotonic() - t0
    return o


def max_connections_check(o: Outcome, opts: Opts) -> str | None:
    n = opts.max_connections
    if o.error:
        return o.error
    if o.notes["refused"] != f"{n}/{n}":
        return f"connections over --max-connections {n}: {o.notes['refused']} refused promptly"
    if o.notes["held_still_served"] != f"{n}/{n}":
        return f"held connections still served: {o.notes['held_still_served']}"
    if o.statuses != [200]:
        return f"a new connection after the others left: {o.summary()}"
    return None


# -- disconnects ----------------------------------------------------------------------------------

def _disconnect(stream: bool, gzip_ok: bool) -> Callable[[str, int, Opts], Outcome]:
    """A long completion (max_tokens ~ the context, ignore_eos); close the socket once it is being
    generated; then watch the server's load until it is idle again."""
    def run(host: str, port: int, opts: Opts) -> Outcome:
        o = Outcome()
        t0 = time.monotonic()
        max_tokens = opts.ctx - 16
        o.notes["max_tokens"] = max_tokens
        g0 = opts.generated()
        hs = [("Accept-Encoding", "gzip, deflate")] if gzip_ok else []
        c = Conn(host, port, opts.io_timeout)
        try:
            c.send(completion(opts, headers=hs, prompt="Write a very long story about a dragon.",
                              max_tokens=max_tokens, stream=stream, ignore_eos=True))
            deadline = time.monotonic() + opts.io_timeout
            while opts.busy() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            if stream:
                c.read_response(opts.io_timeout, head_request=True)  # the head; events follow
                while b"data:" not in c.buf:
                    c._fill(deadline)
            time.sleep(0.2)
        except (Closed, TimeoutError) as e:
            o.error = f"before the disconnect: {type(e).__name__}"
        finally:
            c.close()  # a plain close: the server has to notice the FIN, not only a failed write
        t_gone = time.monotonic()
        deadline = t_gone + max(5.0, opts.io_timeout)
        while opts.busy() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        o.notes["idle_after_s"] = round(time.monotonic() - t_gone, 2) if opts.busy() == 0 else None
        time.sleep(0.3)
        o.notes["tokens_generated"] = int(opts.generated() - g0)
        o.seconds = time.monotonic() - t0
        return o
    return run


def cancelled(o: Outcome, opts: Opts) -> str | None:
    if o.error:
        return o.error
    made, wanted = o.notes["tokens_generated"], o.notes["max_tokens"]
    if o.notes["idle_after_s"] is None or made >= wanted // 2:
        return (f"generation went on after the client left: {made} of {wanted} tokens generated, "
                f"idle after {o.notes['idle_after_s']} s")
    return None


# -- OpenAI-level abuse ---------------------------------------------------------------------------

def _huge_prompt(opts: Opts) -> bytes:
    prompt = "word " * ((4 << 20) // 5)  # 4 MiB
    return _post(opts, "/v1/completions", completion_body(opts, prompt=prompt, max_tokens=4))


# ---- the catalogue ------------------------------------------------------------------------------

def _catalogue() -> list[Attack]:
    A: list[Attack] = []
    add = A.append
    ok200 = lambda *extra: all_of(wants(200, close=False), *extra)  # noqa: E731

    # Limits.
    add(simple("head-over-16k", "limits", _big_head(17 * 1024), wants(431)))
    add(simple("head-under-16k", "limits", _big_head(15 * 1024), ok200(models_ok), linger=0.2,
               about="a 15 KiB head is within the limit"))
    add(simple("101-header-fields", "limits", _many_fields(101), wants(431)))
    add(simple("100-header-fields", "limits", _many_fields(100), ok200(models_ok), linger=0.2,
               about="exactly at the limit"))
    add(simple("body-content-length-over", "limits",
               lambda o: _post(o, "/v1/completions", b" " * (o.max_body + 1)), wants(413)))
    add(simple("body-declared-1gb", "limits",
               lambda o: request("POST", "/v1/completions", [*o.auth(), ("Content-Length", str(1 << 30))])
               + b" " * 4096, wants(413), about="answered before the body arrives"))
    add(simple("body-chunked-over", "limits",
               lambda o: _chunked_head(o) + b"".join(_chunks_of(2 * o.max_body, 16384)), wants(413)))
    add(simple("body-tiny-chunks-over", "limits",
               lambda o: _chunked_head(o) + b"".join(_chunks_of(o.max_body + 16, 1)), wants(413)))
    add(simple("body-chunked-200mb", "limits",
               lambda o: _chunks_of(200 << 20, 1 << 16, prefix=_chunked_head(o)),
               all_of(wants(413), rss_within(lambda o: o.max_body // 1024 + 16 * 1024)), measure_rss=True,
               about="streamed until the server stops reading; RSS sampled"))

    # Content-Encoding.
    for coding in ("gzip", "br", "deflate", "x-custom"):
        add(simple(f"content-encoding-{coding}", "encoding", _encoded(coding), wants(415)))
    add(simple("gzip-bomb", "encoding", _gzip_bomb,
               all_of(wants(415), rss_within(lambda o: 16 * 1024)), measure_rss=True,
               about="unpacks to ~800x --max-body"))
    add(simple("content-encoding-identity", "encoding",
               lambda o: _post(o, "/v1/completions", completion_body(o), [("Content-Encoding", "identity")]),
               ok200(answers_reference), linger=0.2))

    # Framing (RFC 9112).
    for label, values in (("abc", ["abc"]), ("plus", ["+5"]), ("minus", ["-1"]), ("two-numbers", ["5 5"]),
                          ("conflicting", ["5", "6"]), ("comma-list", ["5, 6"])):
        add(simple(f"content-length-{label}", "framing", _cl(*values), wants(400)))
    add(simple("content-length-identical-twice", "framing", _identical_cl, ok200(answers_reference), linger=0.2))
    for label, value in (("gzip-chunked", "gzip, chunked"), ("xchunked", "xchunked"), ("identity", "identity")):
        add(simple(f"transfer-encoding-{label}", "framing", _te(value), wants(501)))
    add(simple("transfer-encoding-chunked-gzip", "framing", _te("chunked, gzip"), wants(400, 501)))
    add(simple("transfer-encoding-Chunked", "framing", _te_capitalised, ok200(answers_reference), linger=0.2))
    add(simple("transfer-encoding-and-content-length", "framing",
               lambda o: request("POST", "/v1/completions",
                                 [*o.auth(), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                                 b"0\r\n\r\n" + _smuggled(o)), wants(400)))
    add(simple("request-line-extra-token", "framing", lambda o: b"GET /health HTTP/1.1 x\r\nHost: a\r\n\r\n",
               wants(400)))
    add(simple("request-line-no-version", "framing", lambda o: b"GET /health\r\nHost: a\r\n\r\n", wants(400)))
    add(simple("tls-client-hello", "framing",
               lambda o: bytes.fromhex("160301020001") + os.urandom(64) + b"\r\n\r\n", wants(400)))
    add(simple("bare-lf", "framing", lambda o: b"GET /health HTTP/1.1\nHost: a\n\n", wants(400)))
    add(simple("space-before-colon", "framing", lambda o: b"GET /health HTTP/1.1\r\nHost : a\r\n\r\n", wants(400)))
    for label, size in (("non-hex", b"zz"), ("negative", b"-10"), ("0x-prefix", b"0x10"),
                        ("overflow", b"1" + b"0" * 20)):
        add(simple(f"chunk-size-{label}", "framing", _bad_chunk(size), wants(400)))
    add(simple("method-not-allowed", "framing",
               lambda o: request("DELETE", "/v1/completions", o.auth()), wants(405, close=False), linger=0.2))

    # Smuggling: a response before the body was read must close the connection.
    add(simple("smuggle-after-401", "smuggling", lambda o: _wrong_key_post(o, _smuggled(o)), wants(401),
               needs=("api_key",)))
    add(simple("smuggle-post-after-401", "smuggling", lambda o: _wrong_key_post(o, _smuggled_post(o)), wants(401),
               needs=("api_key",)))
    add(simple("smuggle-after-404", "smuggling", lambda o: _post(o, "/v1/nothing", _smuggled(o)), wants(404)))
    add(simple("smuggle-after-405", "smuggling",
               lambda o: request("PUT", "/v1/completions", o.auth(), _smuggled(o)), wants(405)))
    add(simple("smuggle-after-413", "smuggling",
               lambda o: request("POST", "/v1/completions", [*o.auth(), ("Content-Length", str(o.max_body + 1))],
                                 _smuggled(o)), wants(413)))
    add(simple("smuggle-after-415", "smuggling",
               lambda o: _post(o, "/v1/completions", _smuggled(o), [("Content-Encoding", "gzip")]), wants(415)))

    # Authentication.
    for scheme in ("bearer", "BEARER"):
        add(simple(f"auth-scheme-{scheme}", "auth",
                   lambda o, s=scheme: request("GET", "/v1/models", [("Authorization", f"{s} {o.api_key}")]),
                   ok200(models_ok), linger=0.2, needs=("api_key",)))
    add(simple("auth-wrong-key", "auth", lambda o: request("GET", "/v1/models", [("Authorization", "Bearer nope")]),
               all_of(wants(401, close=False), error_code("invalid_api_key")), linger=0.2, needs=("api_key",)))
    add(simple("auth-missing", "auth", lambda o: request("GET", "/v1/models"),
               all_of(wants(401, close=False), error_code("invalid_api_key")), linger=0.2, needs=("api_key",)))
    add(simple("health-without-key", "auth", _health, wants(200, close=False), linger=0.2))

    # 100-continue, pipelining, HTTP/1.0.
    add(Attack("expect-100-continue", "protocol", _expect_continue(True), continue_check(True)))
    add(Attack("expect-100-continue-wrong-key", "protocol", _expect_continue(False), continue_check(False),
               needs=("api_key",)))
    add(simple("pipeline-3", "protocol", _pipeline(_health, _completion, _models), pipeline_check([200] * 3),
               responses=3, linger=0.2))
    add(simple("pipeline-2-completions", "protocol", _pipeline(_completion, _completion),
               pipeline_check([200, 200]), responses=2, linger=0.2))
    add(simple("http10-completion", "protocol", _http10(False), http10_framing(False, True), linger=2))
    add(simple("http10-stream", "protocol", _http10(True), http10_framing(True, True), linger=2))
    add(simple("http10-keep-alive", "protocol", _http10(False, True), http10_framing(False, False), linger=0.2))

    # Slow and silent clients.
    read_wait = lambda o: o.read_timeout + 3  # noqa: E731
    add(Attack("slowloris-partial-head", "slow",
               _hold_many(lambda o: o.slow_connections,
                          lambda o: b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-", read_wait),
               all_closed, holds=True))
    add(Attack("silent-connections", "slow",
               _hold_many(lambda o: o.slow_connections, lambda o: b"",
                          lambda o: max(o.read_timeout, o.idle_timeout) + 3),
               all_closed, holds=True, about="connect, send nothing"))
    add(Attack("trickle-head", "slow",
               _trickle(lambda o: b"GET /v1/models HTTP/1.1\r\n", b"X-Slow: " + b"a" * 64, 0.25),
               closed_by_read_timeout, holds=True, about="a header byte every 0.25 s"))
    add(Attack("trickle-body", "slow",
               _trickle(lambda o: request("POST", "/v1/completions",
                                          [*o.auth(), ("Content-Length", "200")]), b"{" + b" " * 199, 1.0),
               closed_by_read_timeout, holds=True, about="a body byte per second"))
    add(Attack("idle-keep-alive", "slow", _idle_keepalive, idle_check))
    add(Attack("over-max-connections", "slow", _over_max_connections, max_connections_check,
               needs=("max_connections",)))

    # Clients that leave.
    for stream in (False, True):
        for gz in (True, False):
            label = f"disconnect-{'stream' if stream else 'non-stream'}{'-gzip' if gz else ''}"
            add(Attack(label, "disconnect", _disconnect(stream, gz), cancelled, needs=("busy", "generated")))

    # OpenAI-level.
    add(simple("max-tokens-past-context", "openai",
               lambda o: completion(o, prompt="Hi", max_tokens=o.ctx),
               all_of(wants(400, close=False), error_code("context_length_exceeded")), linger=0.2))
    add(simple("n-over-limit", "openai", lambda o: completion(o, n=o.max_n + 1),
               all_of(wants(400, close=False), mentions(lambda o: str(o.max_n))), linger=0.2))
    add(simple("unknown-model-404-leak", "openai",
               lambda o: _post(o, "/v1/completions",
                               json.dumps({"model": "no-such-model", "prompt": "x"}).encode()),
               all_of(wants(404, close=False), no_model_path), linger=0.2))
    add(simple("huge-prompt-4mb", "openai", _huge_prompt,
               all_of(wants(400, close=False), error_code("context_length_exceeded")), linger=0.2,
               needs=("big_body",), holds=True, about="needs --max-body over 4 MiB; /health probed while it waits"))
    return A


ATTACKS: list[Attack] = _catalogue()
BY_NAME: dict[str, Attack] = {a.name: a for a in ATTACKS}


def applicable(attack: Attack, opts: Opts) -> str | None:
    """None when OPTS has what ATTACK needs, else what is missing."""
    for need in attack.needs:
        if need == "big_body":
            if opts.max_body < (4 << 20) + 4096:
                return "--max-body under 4 MiB"
        elif getattr(opts, need) is None:
            return f"no {need}"
    return None


# ---- the normal client and the probes -----------------------------------------------------------

def health_latency(host: str, port: int, timeout: float = 5.0) -> float | None:
    """Seconds for GET /health -> 200 on a fresh connection, None if it failed or took > TIMEOUT."""
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        c.close()
        return time.monotonic() - t0 if r.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


def normal_completion(host: str, port: int, opts: Opts) -> str:
    """The reference completion's text through http.client; raises on any failure."""
    c = http.client.HTTPConnection(host, port, timeout=opts.io_timeout)
    try:
        c.request("POST", "/v1/completions", body=completion_body(opts),
                  headers={"Content-Type": "application/json", **dict(opts.auth())})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {body[:200]!r}")
        return json.loads(body)["choices"][0]["text"]
    finally:
        c.close()


@dataclass
class Report:
    attack: Attack
    outcome: Outcome | None
    verdict: str | None  # None: as the spec says
    health_s: list[float | None] = field(default_factory=list)  # /health latencies, during and after
    completion_error: str | None = None  # the normal client during/after the attack
    skipped: str | None = None

    @property
    def worst_health_s(self) -> float | None:
        """The slowest /health, None if one failed."""
        return None if not self.health_s or None in self.health_s else max(self.health_s)

    def problems(self, health_bound: float = HEALTH_BOUND_S) -> list[str]:
        out = []
        if self.verdict:
            out.append(self.verdict)
        worst = self.worst_health_s
        if worst is None:
            out.append(f"/health did not answer within 5 s ({self.health_s})")
        elif worst > health_bound:
            out.append(f"/health took {worst:.2f} s (bound {health_bound:g} s)")
        if self.completion_error:
            out.append(f"normal client: {self.completion_error}")
        return out


def _probe(host: str, port: int, opts: Opts, rep: Report) -> None:
    rep.health_s.append(health_latency(host, port))
    try:
        text = normal_completion(host, port, opts)
        if opts.reference is not None and text != opts.reference:
            rep.completion_error = f"answer {text!r}, wanted {opts.reference!r}"
    except Exception as e:  # noqa: BLE001  (any failure of the normal client is the finding)
        rep.completion_error = rep.completion_error or f"{type(e).__name__}: {e}"[:200]
    rep.health_s.append(health_latency(host, port))


def run_attack(attack: Attack, host: str, port: int, opts: Opts) -> Report:
    """ATTACK against host:port with the normal client probing around it (see the module doc)."""
    why_not = applicable(attack, opts)
    if why_not:
        return Report(attack, None, None, skipped=why_not)
    rep = Report(attack, None, None)
    box: dict = {}
    ready = threading.Event()
    mine = Opts(**{**opts.__dict__, "ready": ready.set})

    def go():
        try:
            box["o"] = attack.run(host, port, mine)
        except Exception as e:  # noqa: BLE001  (a client-side crash is reported, not raised in a thread)
            box["o"] = Outcome(error=f"attack crashed: {type(e).__name__}: {e}")
        finally:
            ready.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    if attack.holds:
        ready.wait(60)
        if t.is_alive():
            _probe(host, port, opts, rep)
    t.join()
    rep.outcome = box["o"]
    rep.verdict = attack.check(rep.outcome, opts)
    _probe(host, port, opts, rep)
    return rep
