"""``vmd-img``: the everyday disk image tool, without a daemon (like ``qemu-img``).

One module per subcommand (``create``, ``info``, ``check``, ``map``), with
shared helpers in ``common`` and a progress line in ``progress``. All image
I/O goes through the block node classes, on an asyncio (uvloop) loop.
"""
