"""
The errors a user can see, each with its standard-mode code and status.

Services raise these; the web layer turns them into the JSON error body
of SPEC section 4 (standard mode) or into the S3 error of the same
meaning (S3 mode).
"""


class OwnCDNError(Exception):
    """
    A refusal with a documented code.  C{code} and C{status} are class
    attributes; the message is the human text shown to the client.
    """

    code = "InternalError"
    status = 500

    def __init__(self, message: str = ""):
        super().__init__(message or self.code)
        self.message = message or self.code


def _error(name: str, status: int) -> type[OwnCDNError]:
    return type(name, (OwnCDNError,), {"code": name, "status": status})


InvalidKey = _error("InvalidKey", 401)
AccessDenied = _error("AccessDenied", 403)
NoSuchService = _error("NoSuchService", 404)
NoSuchFunction = _error("NoSuchFunction", 404)
NoSuchFile = _error("NoSuchFile", 404)
NoSuchVersion = _error("NoSuchVersion", 404)
MissingParameter = _error("MissingParameter", 400)
InvalidParameter = _error("InvalidParameter", 400)
InvalidPath = _error("InvalidPath", 400)
NotSupported = _error("NotSupported", 400)
ReadOnlyReplica = _error("ReadOnlyReplica", 409)
BadDigest = _error("BadDigest", 400)
TooLarge = _error("TooLarge", 413)
MethodNotAllowed = _error("MethodNotAllowed", 405)
SourceError = _error("SourceError", 502)
