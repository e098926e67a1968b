"""
Digests of big bodies computed beside the work that stores them
(L{owncdn.digests}), and a signed S3 payload stored by the storage
engine with its SHA-256 computed once.
"""

import hashlib
import io
import os
import threading
from pathlib import Path

from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from owncdn.digests import QUEUE_BLOCKS, BackgroundDigests, BodyDigests, DigestChain
from owncdn.errors import NoSuchFile
from owncdn.s3.checksums import BACKGROUND_AFTER, PayloadDigests, VerifiedBody
from owncdn.s3.errors import S3Error
from owncdn.storage.engine import StorageEngine

BLOCK = 1024 * 1024


def digest_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "owncdn-digests"]


class Exploding:
    """
    A digest that fails on its second block.
    """

    def __init__(self):
        self.blocks = 0

    def update(self, data: bytes) -> None:
        self.blocks += 1
        if self.blocks == 2:
            raise ValueError("broken digest")

    def digest(self) -> bytes:
        return b""


class Gate:
    """
    A digest that waits for a gate to open before each block, so a test
    can fill the queue.
    """

    def __init__(self):
        self.entered = threading.Event()
        self.open = threading.Event()
        self.seen = []

    def update(self, data: bytes) -> None:
        self.entered.set()
        if not self.open.wait(10):
            raise AssertionError("the gate never opened")
        self.seen.append(data)

    def digest(self) -> bytes:
        return b"".join(self.seen)


class Offering(io.BytesIO):
    """
    A body that computes its SHA-256 itself, as the S3 payload readers do.
    """

    def __init__(self, data: bytes):
        super().__init__(data)
        self.sha256 = hashlib.sha256()
        self.asked = []

    def read(self, size=-1):
        data = super().read(size)
        self.sha256.update(data)
        return data

    def running_digest(self, algorithm: str):
        self.asked.append(algorithm)
        return self.sha256 if algorithm == "sha256" else None


class BackgroundDigestsTests(SynchronousTestCase):
    def test_same_digests_in_order(self):
        """The blocks handed over are hashed in order: the digests equal hashlib's of the whole."""
        blocks = [os.urandom(BLOCK) for _ in range(5)]
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        with BackgroundDigests([md5, sha256]) as background:
            for block in blocks:
                background.update(block)
            background.finish()
        whole = b"".join(blocks)
        self.assertEqual((md5.digest(), sha256.digest()),
                         (hashlib.md5(whole).digest(), hashlib.sha256(whole).digest()))

    def test_failure_raised_by_finish(self):
        """A digest that fails makes finish raise, and the caller is never left waiting."""
        background = BackgroundDigests([Exploding()])
        for _ in range(QUEUE_BLOCKS + 5):
            background.update(b"x" * 4096)
        self.assertRaises(ValueError, background.finish)
        self.assertEqual(digest_threads(), [])

    def test_leaving_stops_the_thread(self):
        """Leaving the with block on an error stops the thread."""
        with self.assertRaises(RuntimeError):
            with BackgroundDigests([hashlib.md5()]) as background:
                background.update(b"a" * 4096)
                raise RuntimeError("the store failed")
        self.assertEqual(digest_threads(), [])
        self.assertRaises(ValueError, background.update, b"late")

    def test_abandon_never_waits(self):
        """Abandoning with a full queue returns at once, and the thread stops without the rest."""
        gate = Gate()
        background = BackgroundDigests([gate])
        background.update(b"first")
        self.assertTrue(gate.entered.wait(10))
        for n in range(QUEUE_BLOCKS):
            background.update(b"%d" % n)
        background.abandon()
        gate.open.set()
        background._thread.join(10)
        self.assertFalse(background._thread.is_alive())
        self.assertEqual(gate.seen, [b"first"])


class BodyDigestsTests(SynchronousTestCase):
    def test_small_body_no_thread(self):
        """A body of one block is hashed in the caller's thread."""
        with BodyDigests(io.BytesIO(), ("md5", "sha256")) as digests:
            digests.update(b"small")
            self.assertEqual(digest_threads(), [])
            found = digests.finish()
        self.assertEqual(found, {"md5": hashlib.md5(b"small").digest(),
                                 "sha256": hashlib.sha256(b"small").digest()})

    def test_offered_digest_taken(self):
        """A digest the body offers is taken from it, not computed again; the others are."""
        data = os.urandom(3 * BLOCK)
        body = Offering(data)
        with BodyDigests(body, ("md5", "sha256")) as digests:
            while block := body.read(BLOCK):
                digests.update(block)
            found = digests.finish()
        self.assertEqual(body.asked, ["md5", "sha256"])
        self.assertEqual(found, {"md5": hashlib.md5(data).digest(),
                                 "sha256": hashlib.sha256(data).digest()})


class DigestChainTests(SynchronousTestCase):
    def pool(self) -> ThreadPool:
        pool = ThreadPool(0, 2, "test-digests")
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_body_hashed_in_the_pool(self):
        """With a pool, a big body's digests are computed in its threads, the same as hashlib's."""
        data = os.urandom(5 * BLOCK)
        with BodyDigests(io.BytesIO(), ("md5", "sha256"), self.pool()) as digests:
            for start in range(0, len(data), BLOCK):
                digests.update(data[start:start + BLOCK])
            self.assertEqual(digest_threads(), [])
            found = digests.finish()
        self.assertEqual(found, {"md5": hashlib.md5(data).digest(),
                                 "sha256": hashlib.sha256(data).digest()})

    def test_update_waits_at_the_limit(self):
        """A bounded chain lets the caller get at most limit blocks ahead of the hashing."""
        gate = Gate()
        chain = DigestChain(gate, self.pool(), limit=QUEUE_BLOCKS)
        chain.update(b"0")
        self.assertTrue(gate.entered.wait(10))
        for n in range(1, QUEUE_BLOCKS + 1):
            chain.update(b"%d" % n)
        passed = threading.Event()

        def one_more():
            chain.update(b"x")
            passed.set()

        waiting = threading.Thread(target=one_more)
        waiting.start()
        # It cannot get past update while the gate holds the job.
        self.assertFalse(passed.is_set())
        gate.open.set()
        waiting.join(10)
        self.assertFalse(waiting.is_alive())
        self.assertTrue(chain.wait(10))
        self.assertEqual(gate.digest(), b"012x")

    def test_failure_raised_by_wait(self):
        """What a digest raised comes out of wait, and the chain still takes every block."""
        chain = DigestChain(Exploding(), self.pool(), limit=1)
        for _ in range(4):
            chain.update(b"block")
        self.assertRaises(ValueError, chain.wait, 10)
        self.assertEqual(chain.hashed, 4)


class SignedPayloadStoreTests(SynchronousTestCase):
    """
    The storage engine storing a plain S3 payload signed with its
    SHA-256: the payload reader's SHA-256 is the one stored, and a
    mismatch is still the reader's error.
    """

    def setUp(self):
        folder = Path(self.mktemp())
        folder.mkdir()
        self.engine = StorageEngine(folder / "files.db")
        self.engine.open()
        self.addCleanup(self.engine.close)
        self.data = os.urandom(BACKGROUND_AFTER * 3 + 5)

    def payload(self, signed: bytes) -> VerifiedBody:
        return VerifiedBody(io.BytesIO(self.data), PayloadDigests.from_headers({}, signed.hex()))

    def test_stored_with_digests(self):
        """A big signed payload is stored with its SHA-256 and MD5."""
        change, _ = self.engine.put("big", self.payload(hashlib.sha256(self.data).digest()),
                                    "application/octet-stream", {}, None, None, 1.0)
        self.assertEqual((change.sha256, change.etag),
                         (hashlib.sha256(self.data).hexdigest(), hashlib.md5(self.data).hexdigest()))
        self.assertEqual(digest_threads(), [])

    def test_mismatch_stores_nothing(self):
        """A big payload that is not the one signed is XAmzContentSHA256Mismatch and nothing is stored."""
        error = self.assertRaises(S3Error, self.engine.put, "big", self.payload(hashlib.sha256(b"other").digest()),
                                  "application/octet-stream", {}, None, None, 1.0)
        self.assertEqual(error.code, "XAmzContentSHA256Mismatch")
        self.assertRaises(NoSuchFile, self.engine.open_version, "big")
        self.assertEqual(self.engine.changes_after(0, 10), [])
        self.assertEqual(digest_threads(), [])
