"""The factory line: flashing cards and provisioning them over USB with mpremote's transport
(link.py: one card's raw REPL; flash.py: the card image onto a card; sheet.py: the village's
list of elders; provision.py: identity, config and registry per card)."""
