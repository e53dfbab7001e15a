"""The SMTP protocol, sans-I/O: parsing and state machines; no sockets, files, DNS, policy."""
