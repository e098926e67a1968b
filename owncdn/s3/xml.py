"""
S3's XML: the response documents, built as text, and the two request
documents S3 mode reads (DeleteObjects, CompleteMultipartUpload),
parsed with defusedxml.

Responses are written by hand rather than through ElementTree: they are
small, fixed in shape and on the hot path of listings, and S3 clients
want them exactly so (the 2006-03-01 namespace on the root, booleans in
lower case, times with milliseconds).  Request bodies come from anyone
who holds a key, so they are parsed by defusedxml (no DTDs, no entity
expansion), after the caller has capped their size, and anything that is
not the expected document is C{MalformedXML}, never a 500.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from owncdn.s3.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
CONTENT_TYPE = b"application/xml"
# A DeleteObjects document of 1000 keys of 1024 bytes, every byte
# escaped as an entity, stays under this.
MAX_REQUEST_XML = 8 * 1024 * 1024
MAX_DELETE_KEYS = 1000
MAX_PART_NUMBER = 10000
DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def timestamp(seconds: float) -> str:
    """
    An S3 XML time: ISO 8601 in UTC with milliseconds, such as
    C{2026-11-27T13:46:52.250Z}.
    """
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def text(name: str, value: str | int | bool) -> str:
    """
    One element holding text; booleans as C{true}/C{false}.
    """
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def node(name: str, *children: str) -> str:
    """
    One element holding other elements (already built).
    """
    return f"<{name}>{''.join(children)}</{name}>"


def document(root: str, *children: str | Iterable[str]) -> bytes:
    """
    A whole response document whose root element is in the S3 namespace.
    Children may be strings or iterables of strings.
    """
    parts = [DECLARATION, f'<{root} xmlns="{NAMESPACE}">']
    for child in children:
        if isinstance(child, str):
            parts.append(child)
        else:
            parts.extend(child)
    parts.append(f"</{root}>")
    return "".join(parts).encode("utf-8")


def owner(key_id: str) -> str:
    """
    The C{<Owner>} of everything a key sees: the key itself.
    """
    return node("Owner", text("ID", key_id), text("DisplayName", key_id))


def parse(data: bytes, root: str) -> Element:
    """
    Parse a request document whose root element is C{root}, with or
    without the S3 namespace.

    @raise S3Error: C{MalformedXML} for anything else.
    """
    try:
        element = fromstring(data)
    except (ParseError, DefusedXmlException, ValueError):
        raise S3Error("MalformedXML") from None
    if _local(element.tag) != root:
        raise S3Error("MalformedXML", f"The root element must be {root}.")
    return element


@dataclass(frozen=True)
class DeleteRequest:
    quiet: bool
    # (key, version ID or None), in the order given.
    objects: list[tuple[str, str | None]]


def parse_delete(data: bytes) -> DeleteRequest:
    """
    The body of a DeleteObjects request::

        <Delete><Quiet>true</Quiet><Object><Key>k</Key><VersionId>v</VersionId></Object>...</Delete>

    @raise S3Error: C{MalformedXML}, also for no objects or more than 1000.
    """
    element = parse(data, "Delete")
    quiet = False
    objects = []
    for child in element:
        name = _local(child.tag)
        if name == "Quiet":
            quiet = _boolean(child)
        elif name == "Object":
            fields = _fields(child, {"Key", "VersionId", "ETag", "LastModifiedTime", "Size"})
            if "Key" not in fields:
                raise S3Error("MalformedXML", "Every Object needs a Key.")
            objects.append((fields["Key"], fields.get("VersionId")))
        else:
            raise S3Error("MalformedXML", f"Unexpected element {name}.")
    if not 1 <= len(objects) <= MAX_DELETE_KEYS:
        raise S3Error("MalformedXML", f"Delete 1 to {MAX_DELETE_KEYS} objects at a time.")
    return DeleteRequest(quiet, objects)


def parse_complete(data: bytes) -> list[tuple[int, str]]:
    """
    The parts of a CompleteMultipartUpload request, as C{(part number,
    ETag without quotes)} in the order given::

        <CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"..."</ETag></Part>...

    Checksums clients add to each part (C{ChecksumCRC32}...) are allowed
    and not used: every part was verified when it was uploaded.

    @raise S3Error: C{MalformedXML}, also for no parts or a part number
        outside 1..10000.
    """
    element = parse(data, "CompleteMultipartUpload")
    parts = []
    allowed = {"PartNumber", "ETag", "ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME",
               "ChecksumSHA1", "ChecksumSHA256"}
    for child in element:
        if _local(child.tag) != "Part":
            raise S3Error("MalformedXML", f"Unexpected element {_local(child.tag)}.")
        fields = _fields(child, allowed)
        number = fields.get("PartNumber", "")
        if not (number.isascii() and number.isdigit() and 1 <= int(number) <= MAX_PART_NUMBER):
            raise S3Error("MalformedXML", "Every Part needs a PartNumber from 1 to 10000.")
        if "ETag" not in fields:
            raise S3Error("MalformedXML", "Every Part needs an ETag.")
        parts.append((int(number), fields["ETag"].strip().strip('"')))
    if not parts:
        raise S3Error("MalformedXML", "You must specify at least one part.")
    return parts


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _boolean(element: Element) -> bool:
    value = (element.text or "").strip().lower()
    if value not in ("true", "false"):
        raise S3Error("MalformedXML", f"{_local(element.tag)} must be true or false.")
    return value == "true"


def _fields(element: Element, allowed: set[str]) -> dict[str, str]:
    """
    The text of each child of C{element}, by name; each at most once.
    """
    fields: dict[str, str] = {}
    for child in element:
        name = _local(child.tag)
        if name not in allowed or name in fields or len(child):
            raise S3Error("MalformedXML", f"Unexpected element {name}.")
        fields[name] = child.text or ""
    return fields
