"""Who may do what: API tokens, their scopes and projects, and the server's safe defaults.

A token is the identity. It has a name, a scope (``read``; ``write``: read
plus ingest and run updates; ``admin``: everything, token management
included) and either every project or a list of project names. Its secret
(``lw_`` and 43 URL-safe characters: 256 random bits) is shown once, at
creation; the database keeps only its SHA-256.

``credentials`` makes and checks secrets, ``access`` is what a request may
do, ``rate_limit`` the per-token write limiter, ``hosts`` the Host-header
allowlist. The FastAPI dependencies that enforce them live in
``api/auth.py``; the table in ``store/tokens.py``.
"""
