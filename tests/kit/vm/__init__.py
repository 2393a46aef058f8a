"""A throw-away VM whose kernel tracks dirty memory, for pre-copy (this machine's kernel has
no soft-dirty bits; Debian's kernels all do). See kernel.py, guest_image.py, boot.py."""
