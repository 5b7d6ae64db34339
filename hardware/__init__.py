"""Hardware data: pin maps, power figures, battery curves, each with its datasheet source."""
