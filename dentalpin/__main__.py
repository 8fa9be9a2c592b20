from dentalpin.cli import main

main()
