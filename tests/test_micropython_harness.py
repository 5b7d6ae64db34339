"""The harness itself: code really runs on MicroPython, tracebacks are readable, heaps are small."""

import pytest

from carecard.tools.micropython import Batch, MicroPythonError


def test_runs_on_micropython_not_cpython(mpy):
    out = mpy.run("import sys\nprint(sys.implementation.name)")
    assert out.strip() == "micropython"


def test_traceback_is_reported(mpy):
    with pytest.raises(MicroPythonError) as info:
        mpy.run("def f():\n    raise ValueError('boom here')\nf()\n")
    assert "ValueError: boom here" in str(info.value)
    assert "line 2" in str(info.value)


def test_small_heap_fails_large_allocation(mpy):
    with pytest.raises(MicroPythonError) as info:
        mpy.run("b = bytearray(200000)", heapsize=16 * 1024)
    assert "MemoryError" in str(info.value)


def test_batch_answers_each_line(mpy):
    script = "import sys\nwhile True:\n    l = sys.stdin.readline()\n    if not l: break\n    print(int(l) * 2)\n"
    with Batch(script) as batch:
        assert batch.call("21") == "42"
        assert batch.call_many([str(i) for i in range(1000)]) == [str(2 * i) for i in range(1000)]


def test_card_image_has_protocol_spec(mpy):
    out = mpy.run("import ccspec\nprint(ccspec.VERSION)")
    assert int(out) >= 1


def test_compiled_card_image_ships_bytecode_that_runs(mpy, tmp_path):
    """Every firmware module compiles with mpy-cross (build_card_image raises otherwise)."""
    from carecard.tools.cardimage import build_card_image, card_files

    image = build_card_image(tmp_path / "image", compiled=True)
    for _src, rel in card_files():
        if rel.endswith(".py") and rel not in ("main.py", "boot.py"):
            assert (image / rel).with_suffix(".mpy").exists(), rel
    lib = image / "lib"
    assert (lib / "ccspec.mpy").exists() and not (lib / "ccspec.py").exists()
    assert list((lib / "hwjson").glob("*.json")), "hardware data missing from the image"
    out = mpy.run("import ccproto, hwdata\nprint(ccproto.__file__)", image=image)
    assert out.strip().endswith("ccproto.mpy")


_RESIDENT = "import gc\ngc.collect()\nbefore = gc.mem_alloc()\nimport at\ngc.collect()\nprint(at.__file__, gc.mem_alloc() - before)\n"


def test_flash_simulation_runs_mpy_in_place_off_the_heap(mpy, tmp_path):
    """rom=: the folder's files sit in a ROMFS image outside the GC heap, mounted at /rom and
    first on the path; a module imported from it runs in place (its bytecode and constants take
    no heap), so it costs much less heap than the same .mpy loaded from a filesystem, and the
    image itself is not on the heap either (a heap smaller than the image still imports it)."""
    import shutil

    from carecard.tools.cardimage import romfs_image

    image = mpy.card_image(compiled=True)
    rom = tmp_path / "rom"
    rom.mkdir()
    shutil.copyfile(image / "lib" / "at.mpy", rom / "at.mpy")
    (rom / "data").mkdir()
    (rom / "data" / "note.txt").write_bytes(b"in flash")
    where, in_flash = mpy.run(_RESIDENT, image=image, rom=rom).split()
    assert where == "/rom/at.mpy"
    where_ram, in_ram = mpy.run(_RESIDENT, image=image).split()
    assert where_ram.endswith("lib/at.mpy")
    assert int(in_flash) < int(in_ram) / 1.5, (in_flash, in_ram)
    assert mpy.run("print(open('/rom/data/note.txt').read())", rom=rom).strip() == "in flash"
    padding = tmp_path / "big"
    padding.mkdir()
    (padding / "blob.bin").write_bytes(bytes(range(256)) * 128)  # a 32 KB image, a 16 KB heap
    assert len(romfs_image(padding)) > 32 * 1024
    out = mpy.run("f = open('/rom/blob.bin', 'rb')\nf.seek(32767)\nprint(f.read(1)[0])", rom=padding,
                  heapsize=16 * 1024)
    assert out.strip() == "255"


def test_each_interpreter_has_its_word_size(mpy, request):
    """`mpy` runs each firmware test twice: on the PyPI port (64-bit) and on the 32-bit build
    like the card's, where small ints end at 2**30 - 1 (a longitude in Fujian in 1e-7 degree is
    past it)."""
    bits = {"mpy64": 64, "mpy32": 32}[request.node.callspec.params["mpy"]]
    assert mpy.current().bits == bits
    out = mpy.run("import sys, micropython\nx = 1184567890\ny = 0\nkind = 'big'\n"
                  "micropython.heap_lock()\ntry:\n    y = x + 1\n    kind = 'small'\n"
                  "except MemoryError:\n    pass\nmicropython.heap_unlock()\n"
                  "print(sys.maxsize, kind)\n")
    assert out.split() == ([str(2**63 - 1), "small"] if bits == 64 else [str(2**31 - 1), "big"])


def test_running_micropython_outside_the_mpy_fixture_is_refused():
    """A test must request `mpy` to run firmware code, so that it runs on both interpreters."""
    from carecard.tools import micropython

    with pytest.raises(micropython.MicroPythonNotFound, match="request the `mpy` fixture"):
        micropython.run("print(1)")
