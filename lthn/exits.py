"""Exit codes of every command-line tool."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_ANSWERING = 3
