"""
The S3 protocol pieces the S3 web resource builds on, free of Twisted:

  - L{owncdn.s3.sigv4}: verify the Signature Version 4 of a request;
  - L{owncdn.s3.chunked}: read its payload, decoding C{aws-chunked} and
    checking chunk signatures, trailers and digests as it is read;
  - L{owncdn.s3.checksums}: the CRC and hash checksums S3 clients send;
  - L{owncdn.s3.errors}: the S3 error codes and statuses.
"""
