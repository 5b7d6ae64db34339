"""The host suite: receiver, storage, sinks, queries and the `carecard` command."""
