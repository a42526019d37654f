from audiences.cli import main

main()
