"""``python -m sglang.launch_server --model-path M --host H --port P …``, served by the double."""

from tests.sglang_double.server import main

if __name__ == "__main__":
    main()
