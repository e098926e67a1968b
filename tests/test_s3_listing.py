"""
Tests for L{owncdn.s3.listing}: S3's rules for cutting a listing into
pages of keys and common prefixes, markers and URL encoding.
"""

from twisted.trial.unittest import SynchronousTestCase

from owncdn.s3 import listing
from owncdn.s3.errors import S3Error
from owncdn.s3.listing import Rollup


def fill(rollup: Rollup, keys) -> Rollup:
    for key in keys:
        if not rollup.add(key, key):
            break
    return rollup


class RollupTests(SynchronousTestCase):
    def test_keys_and_prefixes(self):
        """Keys with the delimiter after the prefix roll up into one common prefix each."""
        rollup = fill(Rollup("p/", "/", 10), ["p/a", "p/b/1", "p/b/2", "p/c/d/e", "p/z"])
        self.assertEqual([key for key, _ in rollup.contents], ["p/a", "p/z"])
        self.assertEqual(rollup.prefixes, ["p/b/", "p/c/"])
        self.assertEqual((rollup.key_count, rollup.truncated, rollup.last), (4, False, "p/z"))

    def test_max_keys_counts_prefixes(self):
        """Common prefixes count towards max-keys; the page is truncated only when more follows."""
        rollup = fill(Rollup("", "/", 2), ["a/1", "a/2", "b", "c"])
        self.assertEqual((rollup.prefixes, rollup.truncated, rollup.last), (["a/"], True, "b"))
        rollup = fill(Rollup("", "/", 2), ["a/1", "a/2", "b"])
        self.assertFalse(rollup.truncated)
        rollup = fill(Rollup("", "/", 1), ["a/1", "a/2", "a/3"])
        self.assertFalse(rollup.truncated)

    def test_folded_keys(self):
        """Keys a case-insensitive service lists under a folded prefix still roll up."""
        rollup = fill(Rollup("Photos/", "/", 10), ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/c.jpg"])
        self.assertEqual((rollup.prefixes, [k for k, _ in rollup.contents]), (["photos/2024/"], ["photos/c.jpg"]))

    def test_multi_character_delimiter(self):
        """A delimiter may be longer than one character."""
        rollup = fill(Rollup("", "--", 10), ["a--b", "a--c", "a-b"])
        self.assertEqual((rollup.prefixes, [k for k, _ in rollup.contents]), (["a--"], ["a-b"]))

    def test_zero_max_keys(self):
        """max-keys=0 gives an empty page that is not truncated."""
        rollup = fill(Rollup("", None, 0), ["a"])
        self.assertEqual((rollup.contents, rollup.truncated, rollup.full), ([], False, True))

    def test_markers(self):
        """A marker that is a common prefix skips all its keys; any other marker is an exclusive start."""
        rollup = Rollup("", "/", 10)
        skip = rollup.start_after("a/")
        self.assertTrue("a/zzz" < skip < "a0")
        self.assertTrue(skip > "a/\U0010ffff" * 3)
        self.assertEqual(rollup.start_after("a/b"), "a/b")
        self.assertEqual(Rollup("", None, 10).start_after("a/"), "a/")
        self.assertEqual(Rollup("b/", "/", 10).start_after("a/"), "a/")
        self.assertIsNone(rollup.start_after(None))

    def test_resume(self):
        """After a batch ending inside the page's last common prefix, listing resumes past it."""
        rollup = fill(Rollup("", "/", 10), ["a/1", "a/2"])
        self.assertEqual(rollup.resume("a/2"), listing.past("a/"))
        fill(rollup, ["b"])
        self.assertEqual(rollup.resume("b"), "b")


class ParameterTests(SynchronousTestCase):
    def test_max_keys(self):
        """max-keys defaults to 1000 and is capped there; non-numbers are InvalidArgument."""
        self.assertEqual((listing.max_keys(None), listing.max_keys("5"), listing.max_keys("5000")), (1000, 5, 1000))
        for value in ("-1", "x", "", "\u00b2"):
            self.assertEqual(self.assertRaises(S3Error, listing.max_keys, value).code, "InvalidArgument")

    def test_url_encoding(self):
        """encoding-type=url writes a space as +, a + as %2B, and keeps /."""
        encode = listing.encoder("url")
        self.assertEqual(encode("a b+c/%\u00e9\uffff"), "a+b%2Bc/%25%C3%A9%EF%BF%BF")
        self.assertEqual(listing.encoder(None)("a b"), "a b")
        self.assertEqual(self.assertRaises(S3Error, listing.encoder, "base64").code, "InvalidArgument")

    def test_continuation_tokens(self):
        """A continuation token stands for its marker; one we did not make is InvalidArgument."""
        token = listing.continuation_token("caf\u00e9/+")
        self.assertEqual(listing.token_marker(token), "caf\u00e9/+")
        for bad in ("%%", "////", "\u00e9"):
            self.assertEqual(self.assertRaises(S3Error, listing.token_marker, bad).code, "InvalidArgument")
