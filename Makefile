# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The ESP32-S3 MicroPython stubs that pyright checks firmware/board/ against (firmware/pyrightconfig.json):
# a folder of their own, so their stdlib stubs never stand in for the host code's.
MPY_STUBS := $(VENV)/mpy-stubs
MPY_STUBS_PKG := micropython-esp32-esp32-generic-s3-stubs==1.29.0.post1
# The dashboard's front-end libraries from npm (host/dashboard/vendor/package.json).
VENDOR := host/dashboard/vendor
LEAFLET := $(VENDOR)/node_modules/leaflet/dist/leaflet.js
# Debian packages the suite talks to as real peers: the MQTT broker and gpsd's decoder.
DEBS := mosquitto:mosquitto gpsdecode:gpsd-clients
# Debian packages without a command of their own: 32-bit gcc for the card-like MicroPython port;
# PostgreSQL's server (its initdb/postgres live in /usr/lib/postgresql/N/bin, off the PATH), which
# the tests start as a throwaway cluster.
DEB_LIBS := gcc-multilib
DEB_LIBS += postgresql
# Debian's headless browser and its driver for the dashboard's browser tests.
DEBS += chromium:chromium chromedriver:chromium-driver
# Chinese glyphs for the dashboard's screenshots (the elders' names).
DEB_LIBS += fonts-noto-cjk
# NATS with JetStream, run as a three-node cluster on loopback by the NATS sink's tests.
DEBS += nats-server:nats-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup debs port32 demo test bench clean

setup: $(STAMP) $(MPY_STUBS)/.installed $(LEAFLET)

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): installing carecard and its Python packages (a minute or two the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

$(MPY_STUBS)/.installed: Makefile | $(STAMP)
	rm -rf $(MPY_STUBS)
	$(BIN)/pip install --quiet --target $(MPY_STUBS) '$(MPY_STUBS_PKG)'
	touch $@

# The dashboard's map library (Leaflet, from npm) into the folder the dashboard serves as /vendor.
$(LEAFLET): $(VENDOR)/package.json
	cd $(VENDOR) && npm install --no-audit --no-fund --loglevel=error
	touch $@

debs:
	@missing=""; for pair in $(DEBS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; done; \
	for pkg in $(DEB_LIBS); do dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" \
	  || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# The 32-bit MicroPython unix port like the card's, built from ../shared/vendor into .venv once
# (rebuilt when the vendored source changes; about 40 s).
port32: setup debs
	$(BIN)/python -m carecard.tools.port32

# the demo's virtual cards run on the card-like 32-bit port
demo: setup port32
	$(BIN)/carecard demo

test: setup debs port32
	# the suite; tests/test_vcard_sim.py writes the virtual cards' days into the corpus folder
	# (tools/vcard/corpus.py), then the alert engine's evaluation report on them and on the
	# generated scenario corpus (fails when a target is missed)
	corpus=$$(mktemp -d) && CARECARD_VCARD_CORPUS=$$corpus $(BIN)/python -m pytest -q -n 2 tests \
	  && $(BIN)/python tests/engine_corpus.py $$corpus >/dev/null \
	  && $(BIN)/carecard replay --evaluate $$corpus; status=$$?; rm -rf $$corpus; exit $$status

bench: setup port32
	for name in protocol nmea at receive engine day; do $(BIN)/carecard bench $$name || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
