"""The transaction log: IceWarp-style, one line per SMTP event. format.py is the only module that
knows the syntax; writer.py is the buffered writer used by the server."""
