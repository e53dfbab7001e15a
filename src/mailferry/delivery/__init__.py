"""Delivery: local Maildir (maildir.py) and, later, remote SMTP."""
