"""`python -m m3embed` runs the command line."""

from m3embed.cli import main

if __name__ == "__main__":
    main()
