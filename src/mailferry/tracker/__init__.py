"""The tracker: transaction logs → one story per message (``mailferry trace`` / ``report``).

reader.py finds and reads log files; reconstruct.py splits lines into sessions (session.py) and
joins them on the message ID into records (records.py, the format in docs/tracking.md); query.py
filters them; render.py and report.py show them; cli.py wires it up. It only reads files, and
never imports the server's packages: it runs on a copied log file on a laptop.
"""
