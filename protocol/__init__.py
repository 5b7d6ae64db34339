"""The CareCard wire protocol (host side). See spec.py for the one definition."""
