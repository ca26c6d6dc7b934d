"""Stage 2, kernel: tracefs itself — our group's events registered and removed, our instance, format
files, ownership locks, the kernel's text files."""
