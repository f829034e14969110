"""QAPI schema compiler for vmd.

Reads QEMU-style QAPI schema files (``schema/*.json``) and generates the
Python modules in ``vmd/_generated``: typed values with input visitors,
command marshallers, event senders and the ``query-qmp-schema`` reply.
The stages mirror QEMU's ``scripts/qapi``: parse (syntax), expr (shape of
each definition), schema (semantics), then one generator per output.
"""
