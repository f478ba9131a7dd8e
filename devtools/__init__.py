"""Development tools, outside the production package (``setup.cfg`` installs only ``bridge``): the local OpenBao
dev server and demo provisioning of ``make run`` (:mod:`devtools.devvault`), an in-process fake Vault for fault
tests (:mod:`devtools.fakevault`), and an in-memory transport for the Vault client (:mod:`devtools.memvault`).
Used by ``scripts/``, ``bench/`` and ``tests/``; nothing in ``bridge/`` imports it."""
