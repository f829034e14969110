"""Freestanding test guests (multiboot v1 ELF), built at test time."""
