"""``vmdctl``: status, console, graceful stop and listing of running vmd instances."""
