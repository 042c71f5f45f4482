from drover.cli import main

main()
