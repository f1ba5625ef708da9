"""Browser tests run engines the way the HTTP tests do."""

from tests.http.conftest import make_client

__all__ = ["make_client"]
