"""The ``nanobanana`` command line (``pip install "nanobanana[cli]"`` for progress bars).

Everything the service's own agent CLI does, on top of `AsyncNanoBanana`:

```python
nanobanana models
nanobanana credits
nanobanana generate --prompt "a banana" [--mode sync|stream|async] [--wait]
    [--model M] [--aspect-ratio R] [--reference-image-url URL ...] [--quantity N]
    [--poll-interval S] [--max-polls N] [--download-dir DIR]
nanobanana poll --id ID [--wait] [--poll-interval S] [--max-polls N]
nanobanana batch FILE [--output results.jsonl] [--download-dir DIR] [--mode ...]
nanobanana simulate [--host H] [--port P] [--generation-time S|LOW-HIGH] [--seed N]
```

with the global options ``--api-key``, ``--base-url``, ``--timeout``,
``--max-retries``, ``--max-credits``, ``--json``, ``--quiet`` and ``--simulate`` (run
against an embedded simulator) before or after the command. Results are JSON on
stdout (JSON lines for ``batch``); progress and messages go to stderr: a live bar on
a terminal, plain lines when piped.

Exit codes:

====  =====================================================================
0     success
1     unexpected error (a bug: please report it with the traceback)
2     usage error (bad arguments, bad input file)
3     API error: missing or invalid key, no credits, access not enabled,
      request rejected (401, 402, 403, 400, 404), or over --max-credits
      (then nothing was sent)
4     the generation failed, or was refused by the content-safety check
5     timeout: the wait (``--max-polls`` x ``--poll-interval``) or a request
      ran out of time
6     network or server error (connection failed, 5xx, rate limit or busy
      after retries, unreadable response, image download failed)
130   interrupted (Ctrl-C); a generation still running is named with the
      command that resumes it
====  =====================================================================

``import nanobanana`` never imports this package, nor rich.
"""

from nanobanana.cli._app import main

__all__ = ["main"]
