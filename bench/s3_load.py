"""
Load for S3 servers where every request carries its own Signature
Version 4, the same for every server measured.

Small requests: a pool of requests signed by botocore's own signer,
each with its own C{x-amz-date} (spread over the few minutes before
the run, well inside S3's 15-minute skew) and, for PUTs, its own key,
written to a file that a wrk Lua script (L{POOL_SCRIPT}) cycles
through.  Signing is done before the run so that the load generator
costs the machine no more than wrk itself; the server still checks
the signature of every request it gets.

Big uploads: one PutObject or a multipart upload from a file on disk,
the body sent with C{sendfile} on one keep-alive connection, the
payload signed as a hex SHA-256 (what botocore signs over plain HTTP),
so a server that verifies it must hash every byte.
"""

import hashlib
import http.client
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.etree import ElementTree

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from benchtools import wrk

REGION = "us-east-1"
# How far back the pool's x-amz-date values go (S3 refuses 15 minutes).
DATE_SPREAD_SECONDS = 300
PART_SIZE = 16 * 1024 * 1024

POOL_SCRIPT = r"""
-- Cycle through pre-signed raw requests: args[1] is a file of
-- "<length>\n<raw request>" records; each thread starts elsewhere in it.
local requests, count, index = {}, 0, 0
local next_thread = 0

function setup(thread)
  thread:set("offset", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  while true do
    local line = f:read("*l")
    if not line then break end
    requests[#requests + 1] = f:read(tonumber(line))
  end
  f:close()
  count = #requests
  index = (offset * 7919) % count
end

function request()
  index = index % count + 1
  return requests[index]
end
"""

_clock = [datetime.now(timezone.utc)]
# botocore reads the signing time from here; the pool sets it per request.
botocore.auth.get_current_datetime = lambda: _clock[0]


class _Signer(botocore.auth.S3SigV4Auth):
    """
    botocore's S3 signer, told the payload hash of a body it does not
    hold (a file sent with sendfile).
    """

    payload_sha256: str | None = None

    def payload(self, request):
        return self.payload_sha256 or super().payload(request)


class Account:
    """
    Where an S3 server listens and the credentials it takes.
    """

    def __init__(self, host: str, port: int, key_id: str, secret: str):
        self.host, self.port = host, port
        self.netloc = f"{host}:{port}"
        self.signer = _Signer(Credentials(key_id, secret), "s3", REGION)

    def sign(self, method: str, path: str, body: bytes | None = b"", payload_sha256: str | None = None,
             headers: dict | None = None, when: datetime | None = None) -> dict:
        """
        The headers of a request signed now (or at C{when}), host included.
        """
        _clock[0] = when or datetime.now(timezone.utc)
        request = AWSRequest(method=method, url=f"http://{self.netloc}{path}",
                             data=body if payload_sha256 is None else b"", headers=dict(headers or {}))
        self.signer.payload_sha256 = payload_sha256
        self.signer.add_auth(request)
        signed = {"Host": self.netloc}
        signed.update(request.headers.items())
        return signed

    def raw(self, method: str, path: str, body: bytes = b"", when: datetime | None = None) -> bytes:
        headers = self.sign(method, path, body, when=when)
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body

    def request(self, method: str, path: str, body: bytes = b"", timeout: float = 60) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = self.sign(method, path, body)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def write_pool(path: Path, account: Account, method: str, paths: list[str], body: bytes = b"") -> Path:
    """
    Sign one request per entry of C{paths}, dated over the last
    L{DATE_SPREAD_SECONDS}, into a pool file for L{POOL_SCRIPT}.
    """
    now = datetime.now(timezone.utc)
    step = DATE_SPREAD_SECONDS / max(1, len(paths))
    with open(path, "wb") as out:
        for i, target in enumerate(paths):
            raw = account.raw(method, target, body, when=now - timedelta(seconds=i * step))
            out.write(b"%d\n" % len(raw) + raw)
    return path


def wrk_pool(url: str, pool: Path, seconds: float, connections: int, threads: int = 1) -> dict:
    """
    Run wrk with the pool script against C{url} (whose host and port
    only are used: the requests are the pool's).
    """
    script = pool.with_suffix(".lua")
    script.write_text(POOL_SCRIPT)
    return wrk(url, seconds, connections, threads, script, [str(pool)])


class BigFile:
    """
    A file of random bytes on disk with the SHA-256 of the whole and of
    each L{PART_SIZE} part, made once and sent to every server.
    """

    def __init__(self, folder: Path, size: int):
        self.path = folder / "big.bin"
        self.size = size
        whole = hashlib.sha256()
        self.part_hashes = []
        with open(self.path, "wb") as out:
            for start in range(0, size, PART_SIZE):
                block = os.urandom(min(PART_SIZE, size - start))
                whole.update(block)
                self.part_hashes.append(hashlib.sha256(block).hexdigest())
                out.write(block)
        self.sha256 = whole.hexdigest()

    def parts(self):
        for number, start in enumerate(range(0, self.size, PART_SIZE), 1):
            yield number, start, min(PART_SIZE, self.size - start), self.part_hashes[number - 1]


def _send(connection: http.client.HTTPConnection, account: Account, method: str, path: str,
          file, offset: int, length: int, sha256: str) -> tuple[int, bytes]:
    headers = account.sign(method, path, payload_sha256=sha256)
    headers["Content-Length"] = str(length)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.sock.sendfile(file, offset, length)
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("ETag", "")


def put_big(account: Account, bucket: str, key: str, big: BigFile, timeout: float) -> float:
    """
    PutObject of the whole file; the seconds from the first byte sent
    to the answer.
    """
    connection = http.client.HTTPConnection(account.host, account.port, timeout=timeout)
    try:
        connection.connect()
        started = time.monotonic()
        with open(big.path, "rb") as file:
            status, answer, _ = _send(connection, account, "PUT", f"/{bucket}/{key}", file, 0,
                                      big.size, big.sha256)
        if status != 200:
            raise RuntimeError(f"PutObject answered {status}: {answer[:300]!r}")
        return time.monotonic() - started
    finally:
        connection.close()


def put_multipart(account: Account, bucket: str, key: str, big: BigFile, timeout: float) -> float:
    """
    CreateMultipartUpload, the parts one after the other on one
    connection, CompleteMultipartUpload; the seconds it all took (and in
    C{put_multipart.completion} the seconds of the completion alone).
    """
    path = f"/{bucket}/{key}"
    connection = http.client.HTTPConnection(account.host, account.port, timeout=timeout)
    try:
        connection.connect()
        started = time.monotonic()
        status, answer = _request(connection, account, "POST", path + "?uploads")
        if status != 200:
            raise RuntimeError(f"CreateMultipartUpload answered {status}: {answer[:300]!r}")
        upload_id = _find(answer, "UploadId")
        etags = []
        with open(big.path, "rb") as file:
            for number, offset, length, sha256 in big.parts():
                status, answer, etag = _send(connection, account, "PUT",
                                             f"{path}?partNumber={number}&uploadId={upload_id}",
                                             file, offset, length, sha256)
                if status != 200:
                    raise RuntimeError(f"UploadPart {number} answered {status}: {answer[:300]!r}")
                etags.append(etag)
        document = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            for n, etag in enumerate(etags, 1)) + "</CompleteMultipartUpload>"
        completing = time.monotonic()
        status, answer = _request(connection, account, "POST", f"{path}?uploadId={upload_id}",
                                  document.encode())
        if status != 200 or b"<Error>" in answer:
            raise RuntimeError(f"CompleteMultipartUpload answered {status}: {answer[:300]!r}")
        put_multipart.completion = time.monotonic() - completing
        return time.monotonic() - started
    finally:
        connection.close()


def _request(connection, account: Account, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    headers = account.sign(method, path, body)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def _find(document: bytes, name: str) -> str:
    for element in ElementTree.fromstring(document).iter():
        if element.tag.rpartition("}")[2] == name:
            return element.text or ""
    raise RuntimeError(f"no {name} in {document[:300]!r}")


def scratch_folder(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="s3bench-", dir=parent))
