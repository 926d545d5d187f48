from ringkv.cli.main import main

main()
