"""The one exception alsel raises on bad input or usage; the CLI maps it to `error: ...` and exit 2."""


class AlselError(Exception):
    """Bad input or bad usage. The message names the file (where there is one) and the problem."""


class Interrupted(Exception):
    """A cooperative stop (SIGINT or SIGTERM) after progress was recorded; the message says what is kept
    and how to continue. The CLI prints `stopped: <message>` and exits 130 (SIGINT) or 143 (SIGTERM)."""
