"""The card's filesystem (VFS) as the flash-backed cores use it: open, rename, remove.

The outbox and the config take a filesystem object so tests can cut power at any byte; this is
the real one they default to."""

import os


class OsFs:
    def open(self, path, mode):
        return open(path, mode)

    def rename(self, src, dst):
        os.rename(src, dst)

    def remove(self, path):
        os.remove(path)
