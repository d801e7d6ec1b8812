"""The outbound HTTP/1.1 client against raw loopback servers: framing, keep-alive, caps, TLS.

Each server here is a socket on 127.0.0.1 that answers exactly the bytes a test
scripts, so the responses can be what real servers send and well-behaved test
servers never do (chunked bodies, close-delimited bodies, interim responses,
garbage, a keep-alive connection closed under the client).
"""

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentfield_site.lib import http1

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """Accepts connections; `answer(conn, n)` is called for the n-th request read on each connection."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            buffer, n = b"", 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                if self.answer(conn, n) is False:
                    conn.close()
                    return
                n += 1
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.listener.close()


def post(url: str, body: bytes = b"{}", limit: int = 1024, pool: http1.Pool | None = None, headers=None):
    async def run():
        return await (pool or http1.Pool(guard=lambda host, infos: None)).post(url, headers or {}, body, limit)
    return asyncio.run(run())


def post_in_turn(url: str, count: int) -> list[http1.Response]:
    """`count` POSTs one after another on one pool, as a sender's keep-alive connections see them."""
    pool = http1.Pool(guard=lambda host, infos: None)

    async def run():
        return [await pool.post(url, {}, b"{}", 1024) for _ in range(count)]
    return asyncio.run(run())


def test_content_length_chunked_and_close_delimited_bodies():
    replies = {
        "/length": OK,
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
                    b"Retry-After: 86400\r\n\r\n",
        "/close": b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\nuntil the end",
        # Not chunked last: the body runs until the server closes (RFC 9112 6.3).
        "/coded": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes",
    }

    def answer(conn, n):
        path = server.requests[-1].split(b" ")[1].decode()
        conn.sendall(replies[path])
        return path not in ("/close", "/coded")

    server = RawServer(answer)
    try:
        assert post(server.url("/length")).body == b"ok"
        chunked = post(server.url("/chunked"))
        assert chunked.body == b"abcde"
        assert "Retry-After" not in chunked.headers  # a trailer is not a header of the answer
        response = post(server.url("/close"))
        assert (response.status, response.body, response.error) == (202, b"until the end", "")
        coded = post(server.url("/coded"))
        assert (coded.status, coded.body, coded.error) == (200, b"raw bytes", "")
    finally:
        server.close()


def test_request_framing_host_and_target():
    def answer(conn, n):
        conn.sendall(OK)

    server = RawServer(answer)
    try:
        post(server.url("/a path/ü?q=a b&x=%41"), b'{"a":1}', headers={"X-Custom": "v"})
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /a%20path/%C3%BC?q=a%20b&x=%41 HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}".encode() in lines
        assert b"Content-Length: 7" in lines and b"X-Custom: v" in lines
        assert body == b'{"a":1}'
        for bad in ({"X-Evil": "a\r\nInjected: 1"}, {"X-Evil\r\nA": "b"}, {"X": "caf\u00e9\u20ac"},
                    {"X": "bell\x07"}, {"Transfer-Encoding": "chunked"}, {"Host": "elsewhere"}):
            with pytest.raises(http1.InvalidRequest):
                post(server.url(), headers=bad)
        assert len(server.requests) == 1
    finally:
        server.close()


def test_keep_alive_reuses_one_connection():
    server = RawServer(lambda conn, n: conn.sendall(OK))
    try:
        assert [r.status for r in post_in_turn(server.url(), 5)] == [200] * 5
        assert server.connections == 1 and len(server.requests) == 5
    finally:
        server.close()


def test_a_kept_alive_connection_closed_under_a_request_is_retried_once_on_a_new_one():
    def answer(conn, n):
        if n == 0:
            conn.sendall(OK)
            return True
        return False  # the second request on a connection: closed without an answer

    server = RawServer(answer)
    try:
        assert [r.status for r in post_in_turn(server.url(), 3)] == [200] * 3
        # Requests 2 and 3 each went out twice: on the stale connection, then on a new one.
        assert server.connections == 3 and len(server.requests) == 5
    finally:
        server.close()
    fresh = RawServer(lambda conn, n: False)  # a new connection closed without an answer is not retried
    try:
        with pytest.raises(http1.ConnectionLost, match="closed"):
            post(fresh.url())
        assert fresh.connections == 1 and len(fresh.requests) == 1
    finally:
        fresh.close()


def test_bytes_past_the_answer_are_not_part_of_it_and_the_connection_is_dropped():
    second = b"HTTP/1.1 201 Created\r\nRetry-After: 9999\r\nContent-Length: 0\r\n\r\n"
    replies = [OK + second, b"HTTP/1.1 204 No Content\r\n\r\nbody of a 204", OK]

    def answer(conn, n):
        conn.sendall(replies[len(server.requests) - 1])

    server = RawServer(answer)
    try:
        first, no_content, third = post_in_turn(server.url(), 3)
        assert (first.status, first.headers) == (200, {"Content-Length": "2"})
        assert (no_content.status, no_content.body, third.status) == (204, b"", 200)
        assert server.connections == 3  # neither unclean connection was reused
    finally:
        server.close()


def test_interim_responses_are_skipped():
    def answer(conn, n):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)

    server = RawServer(answer)
    try:
        response = post(server.url())
        assert (response.status, response.body) == (200, b"ok")
        assert "Link" not in response.headers
    finally:
        server.close()


def test_caps_on_body_and_headers_and_garbage_refused():
    def answer(conn, n):
        path = server.requests[-1].split(b" ")[1]
        if path == b"/big":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100_000)
        elif path == b"/headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"h" * 70_000 + b"\r\n\r\n")
        else:
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return False

    server = RawServer(answer)
    try:
        big = post(server.url("/big"), limit=10)
        assert (big.status, big.body, big.error) == (200, b"x" * 10, "")
        with pytest.raises(http1.ConnectionLost, match="headers larger"):
            post(server.url("/headers"))
        with pytest.raises(http1.ConnectionLost, match="not a valid HTTP response"):
            post(server.url("/ssh"))
    finally:
        server.close()


def test_an_endless_header_line_is_cut_off_at_the_cap_not_buffered():
    sent = []

    def answer(conn, n):
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        total = 0
        try:
            while total < 50_000_000:
                conn.sendall(b"v" * 65536)
                total += 65536
        except OSError:
            pass
        sent.append(total)
        return False

    server = RawServer(answer)
    try:
        with pytest.raises(http1.ConnectionLost, match="headers larger"):
            post(server.url())
        server.thread.join(0)
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent and sent[0] < 10_000_000  # the client hung up long before 50 MB
    finally:
        server.close()


def test_a_connection_not_kept_is_dropped_at_once_not_flushed():
    """A receiver that answers early and never reads the rest: the unsent body is dropped with the socket."""
    outcome = []

    def answer(conn, n):
        pass  # never called: this server answers before the body is in

    server = RawServer(answer)

    def early(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(1024)  # the request line and a little more, not the body
        conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.5)  # long after the client has its answer
        read = 0
        try:
            while data := conn.recv(65536):
                read += len(data)
            outcome.append(("closed", read))
        except ConnectionResetError:
            outcome.append(("reset", read))

    server._serve = early
    try:
        body = b"x" * 32_000_000
        response = post(server.url(), body=body)
        assert response.status == 413
        deadline = time.monotonic() + 10
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        # The socket was dropped with the answer: at most what the kernels had
        # buffered arrived, never the whole body (as a flushing close would send).
        assert outcome, "the client kept the connection to flush the body"
        kind, read = outcome[0]
        assert read < len(body), outcome
    finally:
        server.close()


def test_a_body_cut_short_keeps_the_status_and_says_so():
    def answer(conn, n):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    server = RawServer(answer)
    try:
        response = post(server.url())
        assert response.status == 200 and response.body == b"partial"
        assert "closed" in response.error
    finally:
        server.close()


def test_the_guard_sees_the_addresses_before_any_connection():
    seen = []

    def guard(host, infos):
        seen.append((host, sorted({info[4][0] for info in infos})))
        raise ValueError("refused")

    server = RawServer(lambda conn, n: conn.sendall(OK))
    try:
        with pytest.raises(ValueError, match="refused"):
            post(server.url(host="localhost"), pool=http1.Pool(guard=guard))
        assert seen[0][0] == "localhost" and "127.0.0.1" in seen[0][1]
        assert server.connections == 0
    finally:
        server.close()


def test_host_names_go_out_as_idna_2008_and_connections_stay_with_their_policy():
    assert http1.ascii_hostname("straße.de") == "xn--strae-oqa.de"  # not strasse.de (IDNA 2003)
    origin, head = http1._head("http://straße.de:8080/hook", {}, 0)
    assert origin.host == "xn--strae-oqa.de" and b"\r\nHost: xn--strae-oqa.de:8080\r\n" in head

    server = RawServer(lambda conn, n: conn.sendall(OK))
    pool = http1.Pool(guard=lambda host, infos: None)

    async def run():
        for policy in ("a", "a", "b"):
            await pool.post(server.url(), {}, b"{}", 1024, policy=policy)

    try:
        asyncio.run(run())
        assert server.connections == 2  # the connection made under "a" was not reused under "b"
    finally:
        server.close()


def _certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return cert_path, key_path


def test_https_verifies_the_certificate_against_the_host_name(tmp_path):
    cert_path, key_path = _certificate(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_path, key_path)
    names = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)
    server = RawServer(lambda conn, n: conn.sendall(OK), tls=server_tls)
    try:
        # Not signed by a public authority: refused before any request is sent.
        with pytest.raises(ssl.SSLCertVerificationError):
            post(server.url(scheme="https", host="localhost"))
        assert server.requests == []
        pool = http1.Pool(guard=lambda host, infos: None)
        pool._tls = ssl.create_default_context(cafile=str(cert_path))
        response = post(server.url(scheme="https", host="localhost"), pool=pool)
        assert (response.status, response.body) == (200, b"ok")
        assert names[-1] == "localhost"
        assert f"Host: localhost:{server.port}".encode() in server.requests[0]
    finally:
        server.close()
