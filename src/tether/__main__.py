"""`python -m tether` is the `tether` command (the way `--num-processes` starts its processes)."""

from tether.entry import main

main()
