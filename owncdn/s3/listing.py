"""
The rules of S3 listings, free of any service: how a page of keys under
a prefix is cut, rolled up into common prefixes by a delimiter, resumed
from a marker, and how keys are URL-encoded on request.

The web layer feeds keys in UTF-8 byte order to a L{Rollup} until it
says the page is full; L{Rollup.resume} tells it where to ask the
service next, so that a common prefix hiding millions of keys costs one
more query, not millions of skipped rows.
"""

import base64
import binascii
from collections.abc import Callable
from urllib.parse import quote_plus

from owncdn.s3.errors import S3Error

MAX_KEYS = 1000
# Keys are at most 1024 bytes of UTF-8 and U+10FFFF is the greatest
# character, so no key that starts with a prefix sorts after the prefix
# followed by 256 of them: listing "after" that skips the whole prefix.
_GREATEST = "\U0010FFFF" * 256


def past(prefix: str) -> str:
    """
    A string after every key that starts with C{prefix} (and before
    every key that does not and sorts after it), for listing "after".
    """
    return prefix + _GREATEST


def max_keys(value: str | None) -> int:
    """
    The C{max-keys} parameter: 0 to 1000, more is 1000 as on S3.

    @raise S3Error: C{InvalidArgument} for anything but a whole number.
    """
    if value is None:
        return MAX_KEYS
    if not (value.isascii() and value.isdigit()):
        raise S3Error("InvalidArgument", "max-keys must be a whole number from 0 to 1000.",
                      ArgumentName="max-keys", ArgumentValue=value[:100])
    return min(int(value), MAX_KEYS)


def encoder(encoding_type: str | None) -> Callable[[str], str]:
    """
    How keys, prefixes, delimiters and markers are written in a listing:
    as they are, or with C{encoding-type=url} percent-encoded the way
    S3 does (space as C{+}, so a C{+} as C{%2B}; C{/} kept).

    @raise S3Error: C{InvalidArgument} for another encoding type.
    """
    if encoding_type is None:
        return str
    if encoding_type.lower() != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding_type[:100])
    return lambda value: quote_plus(value, safe="/")


def continuation_token(marker: str) -> str:
    """
    The opaque C{NextContinuationToken} for resuming after C{marker}.
    """
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode("ascii")


def token_marker(token: str) -> str:
    """
    The marker a continuation token stands for.

    @raise S3Error: C{InvalidArgument} for a token we did not make.
    """
    try:
        return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from None


class Rollup:
    """
    One page of a listing: keys, and the common prefixes they roll up
    into, up to C{max_keys} entries in all.

    @ivar contents: C{(key, item)} of the entries listed as themselves.
    @ivar prefixes: the common prefixes, in order.
    @ivar truncated: an entry beyond the page exists.
    @ivar last: the key or common prefix that ends the page (the next
        marker), or C{None} for an empty page.
    @ivar last_item: the item of C{last} when it is a key, else C{None}.
    """

    def __init__(self, prefix: str, delimiter: str | None, max_keys: int):
        self.prefix = prefix
        self.delimiter = delimiter or None
        self.max_keys = max_keys
        self.contents: list[tuple[str, object]] = []
        self.prefixes: list[str] = []
        self.truncated = False
        self.last: str | None = None
        self.last_item: object = None
        self._count = 0

    @property
    def full(self) -> bool:
        return self.truncated or self.max_keys == 0

    def common_prefix(self, key: str) -> str | None:
        """
        The common prefix C{key} rolls up into, or C{None}.

        Keys come from a listing under the prefix, so only the part
        after it is looked at: a case-insensitive service lists the
        prefix folded, not as the client wrote it.
        """
        if self.delimiter is None:
            return None
        found = key.find(self.delimiter, len(self.prefix))
        if found == -1:
            return None
        return key[:found + len(self.delimiter)]

    def start_after(self, marker: str | None) -> str | None:
        """
        Where to start listing for a request's marker (exclusive): a
        marker that is itself a common prefix, as C{NextMarker} and
        continuation tokens are when a page ends on one, skips every key
        under it.
        """
        if marker is None:
            return None
        if marker.startswith(self.prefix) and self.common_prefix(marker) == marker:
            return past(marker)
        return marker

    def add(self, key: str, item: object) -> bool:
        """
        Offer the next key in order.

        @return: C{False} once the page is full; the key is then not
            part of it and L{truncated} is set.
        """
        if self.max_keys == 0:
            return False
        rolled = self.common_prefix(key)
        if rolled is not None and self.prefixes and rolled == self.prefixes[-1] \
                and self.last == rolled:
            return True
        if self._count == self.max_keys:
            self.truncated = True
            return False
        self._count += 1
        if rolled is None:
            self.contents.append((key, item))
            self.last, self.last_item = key, item
        else:
            self.prefixes.append(rolled)
            self.last, self.last_item = rolled, None
        return True

    def resume(self, key: str) -> str:
        """
        Where to list from after a batch that ended with C{key}: past
        the common prefix the page is in the middle of, else the key.
        """
        rolled = self.common_prefix(key)
        if rolled is not None and rolled == self.last:
            return past(rolled)
        return key

    @property
    def key_count(self) -> int:
        """
        The entries on the page, keys and common prefixes (S3's
        C{KeyCount}).
        """
        return self._count
