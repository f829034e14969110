"""The guest machine: memory (``memory``, ``slots``), vCPU threads
(``vcpu``), the ``pc`` board (``pc``), boot loaders (``boot``), the running
machine and its life cycle (``vm``), and its monitor commands (``commands``).
"""
