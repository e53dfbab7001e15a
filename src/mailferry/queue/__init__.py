"""The durable queue: accepted messages on disk (store.py) until every recipient is done."""
