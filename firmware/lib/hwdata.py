# Hardware facts (pin maps, timings, curves) are data in the repo's hardware/ folder. The card
# image carries each one twice: as the module hw_<name> (made at image build time: constants,
# no parsing; its strings stay in flash when the module is frozen or in ROMFS) and as
# /lib/hwjson/<name>.json. load(name) takes the module when there is one, else reads the JSON
# (parsing allocates all of it at once). Read once at start-up and keep what you need.
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
    module = "hw_" + name
    try:
        data = __import__(module).data()
    except ImportError:
        with open(path(name)) as handle:
            return json.load(handle)
    del sys.modules[module]  # nothing of it stays on the heap once the caller took its data
    return data
