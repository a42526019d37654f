"""``python -m audiences.demo.run``: the whole job on bundled sample data (``make demo``)."""

from audiences.demo.run import main

main()
