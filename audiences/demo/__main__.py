"""``python -m audiences.demo`` (``make demo``): the whole job on bundled sample data."""

from audiences.demo.run import main

main()
