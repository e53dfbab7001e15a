"""mailferry: an SMTP mail transfer agent whose transaction log shows what your mail is doing."""

__version__ = "0.1.0"
