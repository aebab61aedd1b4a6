"""`python -m sft_hub` (and `accelerate launch -m sft_hub`) runs the CLI."""

from sft_hub.cli import main

if __name__ == "__main__":
    main()
