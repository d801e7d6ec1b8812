"""Reading a test client's response whole, whether it was sent at once or streamed (the node list)."""

import json
from typing import Any


def content(response) -> bytes:
    return b"".join(response) if response.streaming else response.content


def json_of(response) -> Any:
    return json.loads(content(response))
