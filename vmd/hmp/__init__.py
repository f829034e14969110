"""HMP: the human monitor's command language.

``human-monitor-command`` runs HMP lines today; the readline monitor on a
chardev (``-monitor``, ``-mon mode=readline``) reuses the same table.
"""
