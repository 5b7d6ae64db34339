# The card's entry point: the board this firmware runs on (board.open_board: the ESP32-S3 board
# on the card, the virtual card's simulated board on the unix port), the provisioned config
# (a missing or corrupt file gives a config in safe mode, never a boot failure), the runtime.
import board
import cardloop
import config

# Files are relative to the working directory: / on the card, the device's folder on the virtual
# card.
CONFIG_PATH = "config.json"
DATA_ROOT = ""


def main():
    hw = board.open_board()
    cfg = config.load(CONFIG_PATH)
    cardloop.CardLoop(hw, cfg, root=DATA_ROOT).run()


main()
