"""The village dashboard (`carecard serve`): a web application for grid workers and families.

- accounts.py: accounts with roles (administrator, grid worker, family member), argon2 password
  hashes, server-side sessions with a CSRF token each, in DATA/dashboard.sqlite;
- cards.py: what the pages show, read-only from the device registry and the engine's alerts
  (DATA/carecard.sqlite) and the SQLite sink's query store (DATA/events.sqlite);
- app.py: the Starlette application (pages, server-sent events, the acknowledge/resolve
  buttons, which queue a request for the alert engine: storage.AlertStore.request_alert_action).

Static files: static/ (ours) and vendor/ (Leaflet from npm, installed by `make setup`).
"""
