"""``mcqtune serve``: one base model, many trained artifacts chosen per request (docs/SERVING.md).

The defaults live here, light to import, so the CLI's help and the server read the same numbers.
"""

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_HOSTS = (DEFAULT_HOST, "localhost", "::1")
DEFAULT_PORT = 8000
DEFAULT_WINDOW_MS = 5.0  # how long the first question of a batch waits for more
DEFAULT_MAX_BATCH = 16  # questions per forward pass
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_LOADED = 4  # --run-dir artifacts held at once
