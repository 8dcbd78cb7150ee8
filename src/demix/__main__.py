from demix.cli import main

main()
