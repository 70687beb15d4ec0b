from dmlight.report.cli import main

main()
