"""``POST /v1/completions``: the legacy prompt-in, text-out API."""
