# Hardware facts (pin maps, timings, curves) are data in the repo's hardware/ folder; the card
# image puts them in /lib/hwjson/. This finds and reads one by name, on the card and on the unix
# port alike. Read once at start-up and keep what you need: JSON parsing allocates.
import json
import sys


def path(name):
    for base in sys.path:
        candidate = (base or ".") + "/hwjson/" + name + ".json"
        try:
            with open(candidate):
                return candidate
        except OSError:
            pass
    raise OSError("hardware data '%s.json' not found in hwjson/ on sys.path" % name)


def load(name):
    with open(path(name)) as handle:
        return json.load(handle)
