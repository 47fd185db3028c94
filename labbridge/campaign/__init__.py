"""The reconnection campaign (DESIGN §4): where each analyzer stands, the validation gate, the report.

``stages`` is the vocabulary and its rules (pure), ``validation`` the reference values and their comparison
(pure), ``report`` the site and group report in Markdown, HTML and JSON (pure), ``service`` the operator's
campaign actions on a store, shared by the daemon's HTTP API and the offline CLI. The SQL is in
:mod:`labbridge.store.campaign`. Nothing is imported here, so the config can read the stage names alone.
"""
