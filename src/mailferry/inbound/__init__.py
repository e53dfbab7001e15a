"""The receiving side: listeners, sessions (SMTP over a socket) and the policy they consult."""
