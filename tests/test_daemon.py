"""
The real daemon as an operator runs it: C{twistd -n owncdn} and
C{twistd -ny owncdn.tac} in a child process, talked to over real
sockets (treq, and a raw TCP client for what treq will not send).
"""

import datetime
import gc
import hashlib
import ipaddress
import json
import os
import platform
import stat
from pathlib import Path

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, error, protocol, reactor, ssl, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from owncdn import config as configmod
from owncdn.runtime import YOUNG_COLLECTION_THRESHOLD, tune_allocator, tune_collector
from owncdn.tap import Options
from tests.daemon import LOCAL, eventually, spawn_daemon, start_daemon, write_config
from tests.util import asynctest

NEW_KEY = "fresh-secret-0123456789abc"
EXCHANGE_TIMEOUT = 10


class RawClient(protocol.Protocol):
    """
    A TCP client that sends exactly the bytes it is given and keeps
    everything the server answers.
    """

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)

    def until_closed(self) -> defer.Deferred:
        return self.closed.addTimeout(EXCHANGE_TIMEOUT, reactor)


async def raw_connect(port: int) -> RawClient:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    return await endpoints.connectProtocol(endpoint, RawClient())


async def raw_exchange(port: int, data: bytes) -> bytes:
    """
    Send C{data}, then return all the server says until it closes.
    """
    client = await raw_connect(port)
    client.transport.write(data)
    return await client.until_closed()


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def json_error_code(response: bytes) -> str:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"]


async def call(url: str, function: str, key: str, method="GET", client=None, **kwargs):
    """
    A standard-mode call on a fresh connection; returns (status, JSON).
    """
    if client is None:
        client = treq
        kwargs["persistent"] = False
    response = await client.request(method, f"{url}/{function}", headers={"x-owncdn-key": key},
                                    timeout=EXCHANGE_TIMEOUT, **kwargs)
    return response.code, await response.json()


def make_certificate(folder: Path) -> tuple[Path, Path, bytes]:
    """
    A self-signed certificate for 127.0.0.1 and localhost.

    @return: the key file, the certificate file and the certificate PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(pem)
    return key_file, cert_file, pem


class OptionsTests(SynchronousTestCase):
    def parse(self, *args, env=None) -> Options:
        environ = {k: v for k, v in os.environ.items() if k != "OWNCDN_DATA_DIR"}
        environ.update(env or {})
        self.patch(os, "environ", environ)
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        """Without options or environment: ./owncdn-data and tcp:8080."""
        options = self.parse()
        self.assertEqual((options["data-dir"], options["listen"]), ("./owncdn-data", ["tcp:8080"]))

    def test_data_dir_from_environment(self):
        """OWNCDN_DATA_DIR is the data folder when --data-dir is not given."""
        self.assertEqual(self.parse(env={"OWNCDN_DATA_DIR": "/srv/cdn"})["data-dir"], "/srv/cdn")

    def test_option_beats_environment(self):
        """--data-dir wins over OWNCDN_DATA_DIR."""
        options = self.parse("--data-dir", "/a", env={"OWNCDN_DATA_DIR": "/b"})
        self.assertEqual(options["data-dir"], "/a")

    def test_several_listen(self):
        """--listen may be given several times, in order, replacing the default."""
        options = self.parse("--listen", "tcp:80", "--listen", "ssl:443:privateKey=k:certKey=c")
        self.assertEqual(options["listen"], ["tcp:80", "ssl:443:privateKey=k:certKey=c"])


class RuntimeTests(SynchronousTestCase):
    """
    Once running, the daemon takes what start-up built out of the
    collector's generations, collects young objects less often, and
    keeps big buffers on the C heap.
    """

    def test_tune_allocator(self):
        # glibc (this project's Linux targets) takes the settings.
        if platform.libc_ver()[0] == "glibc":
            self.assertTrue(tune_allocator())
            self.assertTrue(tune_allocator())

    def test_tune_collector(self):
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)
        survivor = [object()]
        tune_collector()
        self.assertEqual(gc.get_threshold(), (YOUNG_COLLECTION_THRESHOLD, *threshold[1:]))
        self.assertGreater(gc.get_freeze_count(), 0)
        # Frozen objects are no longer tracked by any generation's walk.
        self.assertNotIn(survivor, gc.get_objects(generation=2))


class DaemonTestCase(TestCase):
    def data_dir(self) -> Path:
        return Path(self.mktemp()).absolute()

    async def assert_serving(self, daemon, key: str):
        """
        The daemon still answers, and has logged no unhandled error.
        """
        code, body = await call(daemon.url, "servicelist", key)
        self.assertEqual(code, 200, body)
        failures = [e for e in daemon.events
                    if "log_failure" in e or e.get("isError")
                    or e.get("log_level", {}).get("name") in ("error", "critical")]
        self.assertEqual(failures, [])


class StartupTests(DaemonTestCase):
    @asynctest
    async def test_first_start_writes_working_default(self):
        """An empty data folder gets a 0600 config with api, one storage and one write key, logged once."""
        data_dir = self.data_dir()
        daemon = await start_daemon(self, data_dir)
        config_file = data_dir / configmod.CONFIG_NAME
        self.assertEqual(stat.S_IMODE(config_file.stat().st_mode), 0o600)
        config = configmod.load(data_dir)
        self.assertEqual(sorted(s.type for s in config.services), ["api", "storage"])
        [key] = config.keys
        self.assertEqual(key.access, "write")
        self.assertEqual(sum(key.value in m for m in daemon.messages()), 1)
        storage = next(s.id for s in config.services if s.type == "storage")
        code, body = await call(daemon.url, f"uploadfile?sid={storage}&path=hello.txt",
                                key.value, method="PUT", data=b"hello")
        self.assertEqual((code, body["size"]), (200, 5))

    @asynctest
    async def test_second_start_keeps_config(self):
        """A data folder that has a configuration is used as it is, and no key is logged."""
        data_dir = self.data_dir()
        keys = write_config(data_dir)
        before = (data_dir / configmod.CONFIG_NAME).read_bytes()
        daemon = await start_daemon(self, data_dir)
        await self.assert_serving(daemon, keys["WRITER"])
        self.assertEqual((data_dir / configmod.CONFIG_NAME).read_bytes(), before)
        self.assertFalse(any(keys["WRITER"] in m for m in daemon.messages()))

    @asynctest
    async def test_tac_file(self):
        """twistd -ny owncdn.tac serves the same daemon, set up by OWNCDN_DATA_DIR and OWNCDN_LISTEN."""
        data_dir = self.data_dir()
        keys = write_config(data_dir)
        daemon = await start_daemon(self, data_dir, tac=True, listen=(LOCAL, LOCAL))
        for port in daemon.ports:
            code, body = await call(f"http://127.0.0.1:{port}", "servicelist", keys["READER"])
            self.assertEqual(code, 200)
            self.assertIn("files", [s["id"] for s in body["services"]])

    @asynctest
    async def test_port_in_use(self):
        """A busy port stops start-up with exit status 1 and a message naming the endpoint."""
        first_dir = self.data_dir()
        keys = write_config(first_dir)
        first = await start_daemon(self, first_dir)
        second_dir = self.data_dir()
        write_config(second_dir)
        busy = f"tcp:{first.ports[0]}:interface=127.0.0.1"
        second = spawn_daemon(second_dir, listen=(busy,))
        self.addCleanup(second.stop)
        failure = await self.assertFailure(second.ready, RuntimeError)
        self.assertEqual(await second.wait_ended(), 1)
        self.assertIn(f"cannot listen on {busy}", str(failure))
        self.assertIn("already in use", str(failure))
        await self.assert_serving(first, keys["READER"])

    @asynctest
    async def test_bad_listen_description(self):
        """A --listen description that makes no sense stops start-up with exit status 1."""
        data_dir = self.data_dir()
        write_config(data_dir)
        daemon = spawn_daemon(data_dir, listen=("nonsense:8080",))
        self.addCleanup(daemon.stop)
        failure = await self.assertFailure(daemon.ready, RuntimeError)
        self.assertEqual(await daemon.wait_ended(), 1)
        self.assertIn("--listen nonsense:8080", str(failure))

    @asynctest
    async def test_https(self):
        """An ssl: endpoint serves the API over TLS with the given certificate."""
        data_dir = self.data_dir()
        keys = write_config(data_dir)
        key_file, cert_file, pem = make_certificate(Path(self.mktemp()).absolute().parent)
        daemon = await start_daemon(self, data_dir, listen=(
            f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}",))
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(pem))
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        url = f"https://127.0.0.1:{daemon.ports[0]}"
        code, body = await call(url, "servicelist", keys["READER"], client=client)
        self.assertEqual(code, 200)
        code, body = await call(url, "servicelist", "wrong-secret-0123456789", client=client)
        self.assertEqual((code, body["error"]["code"]), (401, "InvalidKey"))


class SignalTests(DaemonTestCase):
    @asynctest
    async def test_sighup_reloads_keys(self):
        """A key added to owncdn.json works after SIGHUP, without a restart."""
        data_dir = self.data_dir()
        write_config(data_dir)
        daemon = await start_daemon(self, data_dir)
        code, body = await call(daemon.url, "servicelist", NEW_KEY)
        self.assertEqual(code, 401)
        raw = json.loads((data_dir / configmod.CONFIG_NAME).read_text())
        raw["keys"].append({"id": "FRESH", "value": NEW_KEY, "access": "read"})
        configmod.save(data_dir, raw)
        daemon.signal("HUP")

        async def new_key_works():
            code, _ = await call(daemon.url, "servicelist", NEW_KEY)
            return code == 200

        await eventually(new_key_works)

    @asynctest
    async def test_sigterm_finishes_upload_in_progress(self):
        """SIGTERM closes the listener but an upload whose body is still arriving is stored, answered, and the exit is 0.

        The request is made slow honestly, by the client: it sends the
        head with Expect: 100-continue (so the daemon has provably
        started the request), half the body, then the rest only after
        the daemon has received SIGTERM and stopped accepting connections.
        """
        data_dir = self.data_dir()
        keys = write_config(data_dir)
        daemon = await start_daemon(self, data_dir)
        port = daemon.ports[0]
        body = os.urandom(2 * 1024 * 1024 + 17)
        half = len(body) // 2
        client = await raw_connect(port)
        client.transport.write(
            b"PUT /uploadfile?sid=files&path=slow.bin HTTP/1.1\r\nHost: x\r\n"
            b"x-owncdn-key: " + keys["WRITER"].encode() + b"\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(body))
        await eventually(lambda: b"100 Continue" in client.received)
        client.transport.write(body[:half])

        daemon.signal("TERM")

        async def refused():
            try:
                (await raw_connect(port)).transport.abortConnection()
            except error.ConnectionRefusedError:
                return True
            return False

        await eventually(refused)
        client.transport.write(body[half:])
        response = await client.until_closed()
        interim, response = response.split(b"\r\n\r\n", 1)
        self.assertEqual(interim, b"HTTP/1.1 100 Continue")
        self.assertEqual(status_line(response), b"HTTP/1.1 200 OK")
        stored = json.loads(response.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(stored["size"], len(body))
        self.assertEqual(stored["sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(await daemon.wait_ended(), 0)

        again = await start_daemon(self, data_dir)
        response = await treq.get(f"{again.url}/getfile?sid=files&path=slow.bin",
                                  headers={"x-owncdn-key": keys["READER"]},
                                  timeout=EXCHANGE_TIMEOUT, persistent=False)
        self.assertEqual(await response.content(), body)

    @asynctest
    async def test_sigterm_when_idle(self):
        """SIGTERM with no request in progress, but an idle kept-alive connection, exits 0 promptly."""
        data_dir = self.data_dir()
        write_config(data_dir)
        daemon = await start_daemon(self, data_dir)
        idle = await raw_connect(daemon.ports[0])
        daemon.signal("TERM")
        self.assertEqual(await idle.until_closed(), b"")
        self.assertEqual(await daemon.wait_ended(), 0)


class BadInputTests(DaemonTestCase):
    """
    Each hostile or broken request gets its documented refusal, and the
    daemon goes on serving with nothing unhandled in its log.
    """

    @asynctest
    async def setUp(self):
        data_dir = self.data_dir()
        self.keys = write_config(data_dir, maxUploadSize="1KB", headerTimeout=1, bodyTimeout=1)
        self.daemon = await start_daemon(self, data_dir)
        self.port = self.daemon.ports[0]
        self.key_header = b"x-owncdn-key: " + self.keys["WRITER"].encode() + b"\r\n"

    def request(self, head_line: bytes, *headers: bytes, key=True) -> bytes:
        lines = head_line + b"\r\nHost: x\r\nConnection: close\r\n"
        if key:
            lines += self.key_header
        return lines + b"".join(h + b"\r\n" for h in headers) + b"\r\n"

    async def exchange(self, data: bytes) -> bytes:
        response = await raw_exchange(self.port, data)
        await self.assert_serving(self.daemon, self.keys["READER"])
        return response

    @asynctest
    async def test_invalid_key(self):
        """A wrong key gets 401 InvalidKey."""
        code, body = await call(self.daemon.url, "servicelist", "wrong-secret-0123456789")
        self.assertEqual((code, body["error"]["code"]), (401, "InvalidKey"))
        await self.assert_serving(self.daemon, self.keys["READER"])

    @asynctest
    async def test_oversized_body_declared(self):
        """A Content-Length over maxUploadSize gets 413 TooLarge without the body being sent."""
        response = await self.exchange(self.request(
            b"PUT /uploadfile?sid=files&path=big HTTP/1.1", b"Content-Length: 1025"))
        self.assertEqual(status_line(response), b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(json_error_code(response), "TooLarge")

    @asynctest
    async def test_oversized_body_chunked(self):
        """A chunked body that grows past maxUploadSize gets 413 TooLarge and a close."""
        response = await self.exchange(self.request(
            b"PUT /uploadfile?sid=files&path=big HTTP/1.1", b"Transfer-Encoding: chunked")
            + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"1\r\nx\r\n")
        self.assertEqual(status_line(response), b"HTTP/1.1 413 Request Entity Too Large")
        code, body = await call(self.daemon.url, "getfile?sid=files&path=big", self.keys["READER"])
        self.assertEqual((code, body["error"]["code"]), (404, "NoSuchFile"))

    @asynctest
    async def test_absurd_content_length(self):
        """A Content-Length of 99999999999999999999999 gets 413, not a 500 or a crash."""
        response = await self.exchange(self.request(
            b"PUT /uploadfile?sid=files&path=big HTTP/1.1",
            b"Content-Length: 99999999999999999999999"))
        self.assertEqual(status_line(response), b"HTTP/1.1 413 Request Entity Too Large")

    @asynctest
    async def test_head_never_finished(self):
        """A client trickling its head a byte at a time is cut after headerTimeout, unanswered."""
        client = await raw_connect(self.port)
        data = iter(self.request(b"GET /servicelist HTTP/1.1", b"X-Pad: " + b"p" * 200))
        trickle = task.LoopingCall(lambda: client.transport.write(bytes([next(data)])))
        trickle.start(0.1)
        started = reactor.seconds()
        response = await client.until_closed()
        trickle.stop()
        self.assertEqual(response, b"")
        self.assertGreaterEqual(reactor.seconds() - started, 0.9)
        await self.assert_serving(self.daemon, self.keys["READER"])

    @asynctest
    async def test_body_stalls(self):
        """
        An upload whose body stops arriving is cut after bodyTimeout,
        unanswered, and nothing of it is stored.
        """
        client = await raw_connect(self.port)
        started = reactor.seconds()
        client.transport.write(self.request(b"PUT /uploadfile?sid=files&path=stalled HTTP/1.1",
                                            b"Content-Length: 500") + b"x" * 100)
        response = await client.until_closed()
        self.assertEqual(response, b"")
        # bodyTimeout is 1 s here (not the 60 s default, nor Twisted's 12 hours).
        self.assertTrue(0.9 <= reactor.seconds() - started < 10)
        code, body = await call(self.daemon.url, "getfile?sid=files&path=stalled", self.keys["READER"])
        self.assertEqual((code, body["error"]["code"]), (404, "NoSuchFile"))
        await self.assert_serving(self.daemon, self.keys["READER"])

    @asynctest
    async def test_non_utf8_path(self):
        """A path that is not UTF-8 gets 400 InvalidPath; a raw non-ASCII byte gets 400."""
        response = await self.exchange(self.request(b"GET /getfile?sid=files&path=caf%E9 HTTP/1.1"))
        self.assertEqual(status_line(response), b"HTTP/1.1 400 Bad Request")
        self.assertEqual(json_error_code(response), "InvalidPath")
        response = await self.exchange(self.request(b"GET /getfile?sid=files&path=caf\xe9 HTTP/1.1"))
        self.assertEqual(status_line(response), b"HTTP/1.1 400 Bad Request")

    @asynctest
    async def test_non_utf8_function(self):
        """A function name that is not UTF-8 gets 404 NoSuchFunction."""
        response = await self.exchange(self.request(b"GET /%FF%FE HTTP/1.1"))
        self.assertEqual(status_line(response), b"HTTP/1.1 404 Not Found")
        self.assertEqual(json_error_code(response), "NoSuchFunction")

    @asynctest
    async def test_nul_in_path(self):
        """A NUL in the path gets 400 InvalidPath (encoded) or 400 (raw)."""
        response = await self.exchange(self.request(b"GET /getfile?sid=files&path=a%00b HTTP/1.1"))
        self.assertEqual(json_error_code(response), "InvalidPath")
        response = await self.exchange(self.request(b"GET /getfile?sid=files&path=a\x00b HTTP/1.1"))
        self.assertEqual(status_line(response), b"HTTP/1.1 400 Bad Request")

    @asynctest
    async def test_huge_header(self):
        """A header of 64 KiB gets 431 and a close."""
        response = await self.exchange(self.request(b"GET /servicelist HTTP/1.1",
                                                    b"X-Big: " + b"a" * 65536))
        self.assertEqual(status_line(response), b"HTTP/1.1 431 Request Header Fields Too Large")

    @asynctest
    async def test_malformed_chunked_body(self):
        """A chunked body with a chunk size that is not hex gets 400, nothing stored."""
        response = await self.exchange(self.request(
            b"PUT /uploadfile?sid=files&path=c HTTP/1.1", b"Transfer-Encoding: chunked")
            + b"zz\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(status_line(response), b"HTTP/1.1 400 Bad Request")
        code, body = await call(self.daemon.url, "getfile?sid=files&path=c", self.keys["READER"])
        self.assertEqual(code, 404)

    @asynctest
    async def test_garbage_request_line(self):
        """A request line of garbage (here a TLS hello on the plain port) gets 400."""
        response = await self.exchange(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        self.assertEqual(status_line(response), b"HTTP/1.1 400 Bad Request")
