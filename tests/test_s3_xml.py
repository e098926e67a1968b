"""
Tests for L{owncdn.s3.xml}: the response documents and the two request
documents S3 mode parses.
"""

from twisted.trial.unittest import SynchronousTestCase

from owncdn.s3 import xml
from owncdn.s3.errors import S3Error


class ResponseTests(SynchronousTestCase):
    def test_timestamp(self):
        """XML times are UTC with milliseconds, sub-second precision kept."""
        self.assertEqual(xml.timestamp(1795787212.25), "2026-11-27T13:46:52.250Z")
        self.assertEqual(xml.timestamp(0), "1970-01-01T00:00:00.000Z")

    def test_document(self):
        """A document has the declaration, the S3 namespace on its root, escaped text, lower-case booleans."""
        body = xml.document("Root", xml.text("Key", "a<&>b"), [xml.text("IsTruncated", False)],
                            xml.node("Owner", xml.text("ID", 7)))
        self.assertEqual(body, b'<?xml version="1.0" encoding="UTF-8"?>\n'
                               b'<Root xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                               b"<Key>a&lt;&amp;&gt;b</Key><IsTruncated>false</IsTruncated>"
                               b"<Owner><ID>7</ID></Owner></Root>")

    def test_error_document_has_no_namespace(self):
        """Error documents, unlike the others, carry no namespace."""
        self.assertIn(b"\n<Error><Code>NoSuchKey</Code>", S3Error("NoSuchKey").to_xml("ID"))


class RequestTests(SynchronousTestCase):
    def assertMalformed(self, parse, data: bytes) -> None:
        error = self.assertRaises(S3Error, parse, data)
        self.assertEqual(error.code, "MalformedXML")

    def test_delete(self):
        """A Delete document gives Quiet and the keys with their versions, namespace or not."""
        for namespace in ("", ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'):
            request = xml.parse_delete(
                f"<Delete{namespace}><Quiet>True</Quiet><Object><Key> a </Key></Object>"
                f"<Object><Key>b</Key><VersionId>000000000001</VersionId></Object></Delete>".encode())
            self.assertEqual((request.quiet, request.objects), (True, [(" a ", None), ("b", "000000000001")]))

    def test_delete_malformed(self):
        """Anything but 1 to 1000 well-formed Objects with a Key is MalformedXML."""
        for data in (b"", b"<Delete/>", b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
                     b"<Delete><Object><Key><b/></Key></Object></Delete>",
                     b"<Delete><Extra/><Object><Key>a</Key></Object></Delete>",
                     b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"):
            self.assertMalformed(xml.parse_delete, data)

    def test_entities_refused(self):
        """DTDs and entities (billion laughs, external entities) are refused as MalformedXML."""
        self.assertMalformed(xml.parse_delete, b'<!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>&e;</Key>'
                                               b"</Object></Delete>")
        self.assertMalformed(xml.parse_delete, b'<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                                               b"<Delete><Object><Key>&e;</Key></Object></Delete>")

    def test_complete(self):
        """A CompleteMultipartUpload document gives part numbers and unquoted ETags; checksums are allowed."""
        parts = xml.parse_complete(
            b'<CompleteMultipartUpload><Part><ETag>"abc"</ETag><PartNumber>1</PartNumber>'
            b"<ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>"
            b"<Part><PartNumber>3</PartNumber><ETag>def</ETag></Part></CompleteMultipartUpload>")
        self.assertEqual(parts, [(1, "abc"), (3, "def")])

    def test_complete_malformed(self):
        """No parts, a bad part number or a missing ETag is MalformedXML."""
        for data in (b"<CompleteMultipartUpload/>",
                     b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>a</ETag></Part>"
                     b"</CompleteMultipartUpload>",
                     b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
                     b"<Delete/>"):
            self.assertMalformed(xml.parse_complete, data)
